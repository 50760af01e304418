"""The glove on a serial port: a real pseudo-terminal pair, the firmware's lines at the glove's pace,
an unplug and a replug at a stable path (as udev's /dev/serial/by-id gives); pyserial unmocked.

`FakeGlove` and `firmware_lines` are for any test that needs a glove on a port:
`from tests.test_glove import FakeGlove, firmware_lines`.
"""

from __future__ import annotations

import _thread
import array
import contextlib
import csv
import fcntl
import os
import select
import termios
import threading
import time
import tty
from pathlib import Path

from signglove_exp.inference.glove import FIRMWARE_HEADER, serial_lines
from signglove_exp.inference.recognizer import Recognizer
from signglove_exp.inference.stream import StreamSettings, recognise_stream, stream_rows
from tests import test_recognize
from tests.conftest import run_module
from tests.test_readme import CHECKS, LIVE
from tests.test_recognize import REFERENCE, edit_distance

test_split = test_recognize.test_split  # the fixture: the reference model's unseen episodes


def firmware_lines(root: Path, episodes, first_ms: int = 0) -> list[str]:
    """The episodes back to back as the firmware prints its samples (no header: the glove sends that
    when asked), in FIRMWARE_HEADER's order: the timestamp a millis() counter from `first_ms` that
    advances as the recording did (25 ms between episodes), angles with 2 decimals."""
    lines, millis = [], first_ms
    for episode in episodes:
        with open(root / episode.path, encoding="utf-8", newline="") as f:
            previous = None
            for row in csv.DictReader(f):
                stamp = int(float(row["timestamp_ms"]))
                millis += 25 if previous is None else max(stamp - previous, 0)
                previous = stamp
                angles = [f"{float(row[a]):.2f}" for a in ("pitch", "roll", "yaw")]
                rest = [row[c] for c in FIRMWARE_HEADER.split(",")[4:]]
                lines.append(",".join([str(millis), *angles, *rest]))
    return lines


class FakeGlove:
    """The firmware's side of a pseudo-terminal whose slave, the host's end, `link` points at.

    It answers the command `header` with `header` (None: answers nothing) and records every command in
    `commands`; `play` writes lines at a pace; `unplug` closes the pty and removes the link, `plug`
    opens a new pty and points the link at it. A pty has no DTR, so the glove cannot see the host open
    the port: the header it sends on connect is not simulated, the host must ask for it (as a host
    that opens the port while the glove streams must anyway). Lines written while unplugged are lost,
    as are those written before the host opens the port (pyserial flushes the input on open).
    """

    def __init__(self, link: Path, header: str | None = FIRMWARE_HEADER):
        self.link, self.header = link, header
        self.commands: list[str] = []
        self._since_plug: list[str] = []
        self._master: int | None = None
        self._slave: int | None = None
        self._lock = threading.Lock()
        self._heard = threading.Condition()
        self._closed = threading.Event()
        self.plug()
        self._reader = threading.Thread(target=self._answer, daemon=True)
        self._reader.start()

    def __enter__(self) -> FakeGlove:
        return self

    def __exit__(self, *exc) -> None:
        self._closed.set()
        with self._heard:
            self._heard.notify_all()
        self.unplug()
        self._reader.join(timeout=5)

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo of the glove's lines back to it before pyserial sets the port raw
        os.set_blocking(master, False)
        with self._lock:
            self._master, self._slave, self._since_plug = master, slave, []
        new = self.link.with_name(self.link.name + ".new")
        os.symlink(os.ttyname(slave), new)
        os.replace(new, self.link)

    def unplug(self) -> None:
        with self._lock:
            self.link.unlink(missing_ok=True)
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            self._master = self._slave = None

    def write(self, line: str | bytes, timeout: float = 20) -> None:
        """One line, ended as the firmware's println ends it; waits while the host's buffer is full."""
        data = (line.encode() if isinstance(line, str) else line) + b"\r\n"
        deadline = time.monotonic() + timeout
        while data:
            with self._lock:
                if self._master is None:
                    return
                with contextlib.suppress(BlockingIOError):
                    data = data[os.write(self._master, data) :]
            if data:
                assert time.monotonic() < deadline, f"the host read nothing for {timeout} s"
                time.sleep(0.005)

    def play(self, lines, pace_s: float) -> None:
        for line in lines:
            self.write(line)
            time.sleep(pace_s)

    def wait_for(self, command: str, timeout: float = 60) -> None:
        """Until the host has sent `command` since the glove was last plugged in."""
        with self._heard:
            heard = self._heard.wait_for(
                lambda: command in self._since_plug or self._closed.is_set(), timeout
            )
        assert heard and not self._closed.is_set(), f"the host did not send {command!r} in {timeout} s"

    def drained(self, timeout: float = 30) -> None:
        """Until the host has read every line written (the slave's input queue is empty)."""
        waiting, deadline = array.array("i", [0]), time.monotonic() + timeout
        while True:
            time.sleep(0.05)  # a write reaches the queue a moment after os.write returns
            with self._lock:
                fcntl.ioctl(self._slave, termios.FIONREAD, waiting)
            if waiting[0] == 0:
                return
            assert time.monotonic() < deadline, f"the host left {waiting[0]} bytes unread"

    def _answer(self) -> None:
        pending = b""
        while not self._closed.is_set():
            with self._lock:
                fd = self._master
            if fd is None:
                time.sleep(0.01)
                continue
            try:
                readable = select.select([fd], [], [], 0.02)[0]
                with self._lock:
                    data = os.read(fd, 1024) if readable and fd == self._master else b""
            except OSError:  # unplugged meanwhile
                continue
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                command = line.decode("utf-8", "replace").strip()
                if command == "header" and self.header is not None:
                    self.write(self.header)  # before the command is heard: a waiter's next line follows it
                with self._heard:
                    self.commands.append(command)
                    self._since_plug.append(command)
                    self._heard.notify_all()


@contextlib.contextmanager
def within(seconds: float):
    """Fail, not hang, if the block (a command run in this process) is still running after `seconds`."""
    fired = threading.Event()

    def fire():
        fired.set()
        _thread.interrupt_main()

    timer = threading.Timer(seconds, fire)
    timer.start()
    try:
        yield
    except KeyboardInterrupt:
        if not fired.is_set():
            raise
    finally:
        timer.cancel()
    assert not fired.is_set(), f"still running after {seconds} s"


class Background(threading.Thread):
    """`fn()` in a daemon thread: a test that fails while it runs cannot hang on it."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.error = fn, None
        self.start()

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as e:  # handed to the test by result()
            self.error = e

    def result(self, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"still running after {timeout} s"
        if self.error:
            raise self.error


def recognised(lines) -> list[str]:
    """The jamo the stream command emits for these lines, read as fast as possible."""
    rec = Recognizer.load(REFERENCE)
    return [e["jamo"] for e in recognise_stream(rec, stream_rows(lines, rec.channels), StreamSettings())]


README_RECOGNIZE = "python -m signglove_exp.recognize model.ckpt --serial /dev/ttyACM0"


def serial_command(link: Path, *args: str):
    """The README's command, the glove's port and the model put in."""
    assert CHECKS[README_RECOGNIZE] == LIVE
    words = README_RECOGNIZE.replace("model.ckpt", str(REFERENCE)).replace("/dev/ttyACM0", str(link))
    return run_module(*words.split()[2:], *args, cwd=link.parent)


def test_recognize_reads_the_glove_on_a_serial_port(test_split, tmp_path):
    root, episodes = test_split
    episodes = episodes[:3]
    signed = firmware_lines(root, episodes)
    glitches = ["# battery 80%", "12,34", b"1,2,\xc3\x28"]  # information, too few fields, not UTF-8
    stream = ["# IMU ready", *signed[:40], *glitches, *signed[40:]]
    link = tmp_path / "usb-Arduino_Nano_33_IoT-if00"
    with FakeGlove(link) as glove:

        def sign():
            glove.wait_for("header")
            glove.play(stream[:41], pace_s=0.025)  # the glove's own pace for a second, then faster
            glove.play(stream[41:], pace_s=0.008)

        signing = Background(sign)
        with within(60):
            proc = serial_command(link, "--idle", "1")
        assert glove.commands == ["header"]
        signing.result(timeout=10)
    assert proc.returncode == 0, proc.stderr[-3000:]
    emitted = [line.split("\t")[1] for line in proc.stdout.splitlines()]
    assert emitted == recognised([FIRMWARE_HEADER, *signed])  # every sample, none twice, in order
    assert edit_distance(emitted, [e.jamo for e in episodes]) <= 1
    notes = proc.stderr.splitlines()
    assert notes[0] == f"glove {link}: connected, 115200 baud"
    assert f"glove {link}: IMU ready" in notes and f"glove {link}: battery 80%" in notes
    assert [n.split(",")[0] for n in notes if ": skipped, " in n] == [
        "stream line 42: skipped",
        "stream line 43: skipped",
    ]
    assert "Traceback" not in proc.stderr


def test_an_unplugged_glove_is_waited_for_and_read_again(test_split, tmp_path):
    root, episodes = test_split
    episodes = episodes[3:7]
    before = firmware_lines(root, episodes[:2])  # the cable pulled out after the second sign
    after = firmware_lines(root, episodes[2:])  # the board restarted: millis() from 0 again
    link = tmp_path / "glove"
    with FakeGlove(link) as glove:

        def sign():
            glove.wait_for("header")
            glove.play(before, pace_s=0.008)
            glove.drained()
            glove.unplug()
            time.sleep(0.5)
            glove.plug()
            glove.wait_for("header")
            glove.play(after, pace_s=0.008)

        signing = Background(sign)
        with within(60):
            proc = serial_command(link, "--idle", "2")
        assert glove.commands == ["header", "header"]
        signing.result(timeout=10)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    states = [n for n in proc.stderr.splitlines() if n.startswith(f"glove {link}: ")]
    assert states[0] == states[2] == f"glove {link}: connected, 115200 baud" and len(states) == 3
    assert states[1].startswith(f"glove {link}: disconnected (") and states[1].endswith(
        "retrying every 0.5 s"
    )
    emitted = [line.split("\t")[1] for line in proc.stdout.splitlines()]
    assert emitted == recognised([FIRMWARE_HEADER, *before, FIRMWARE_HEADER, *after])  # no sample lost
    assert edit_distance(emitted, [e.jamo for e in episodes]) <= 1
    assert emitted[-2:] == [e.jamo for e in episodes[2:]]  # the signs after the replug


def test_a_port_that_is_not_there_is_reported_once_until_idle(tmp_path):
    missing = tmp_path / "ttyACM9"
    with within(60):
        proc = serial_command(missing, "--idle", "1")
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"glove {missing}: not connected (No such file or directory), retrying every 0.5 s",
        "stream: ended without a header line, nothing to recognise",
    ]
    states = []
    started = time.monotonic()
    with within(10):
        lines = list(
            serial_lines(str(missing), on_state=lambda *s: states.append(s), retry_s=0.1, idle_s=0.5)
        )
    assert lines == [] and 0.5 <= time.monotonic() - started < 1.0  # idle, though never connected
    assert states == [("disconnected", "not connected (No such file or directory), retrying every 0.1 s")]


def test_serial_lines_wait_for_a_glove_plugged_in_later_and_end_on_stop(tmp_path):
    link, states, stop = tmp_path / "glove", [], threading.Event()
    lines = serial_lines(str(link), on_state=lambda *s: states.append(s), stop=stop, retry_s=0.1)
    received = []
    reading = Background(lambda: received.extend(lines))
    time.sleep(0.5)
    assert states == [("disconnected", "not connected (No such file or directory), retrying every 0.1 s")]
    with FakeGlove(link, header=None) as glove:  # a glove slow to answer: a sample before the header
        glove.wait_for("header", timeout=10)
        glove.play(["3,-0.5,12.25", "# ready", FIRMWARE_HEADER, "40,1.00,2.00"], pace_s=0.01)
        glove.drained()
        stop.set()
        stopped = time.monotonic()
        reading.result(timeout=5)
        assert time.monotonic() - stopped < 0.5  # `stop` is seen within a read timeout
    assert received == [FIRMWARE_HEADER.encode(), b"40,1.00,2.00"]
    assert states[1:] == [("connected", "connected, 115200 baud"), ("info", "ready")]


def test_a_port_in_use_is_reported_not_shared(tmp_path):
    """Two readers of one port would each get every other line: the second waits for the first."""
    link, states = tmp_path / "glove", []
    with FakeGlove(link) as glove:
        first = serial_lines(str(link), on_state=lambda *s: None)
        assert next(first) == FIRMWARE_HEADER.encode()
        second = serial_lines(str(link), on_state=lambda *s: states.append(s), retry_s=0.1, idle_s=0.3)
        with within(10):
            assert list(second) == []
        assert states == [("disconnected", "not connected (in use by another program), retrying every 0.1 s")]
        assert glove.commands == ["header"]
        first.close()
