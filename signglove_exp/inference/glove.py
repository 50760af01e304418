"""The glove itself on a serial port: its firmware's lines, through unplugs, for `stream_rows`.

The firmware (Arduino Nano 33 IoT, 115200 baud) sends FIRMWARE_HEADER on connect and whenever it
receives the line `header`, then one sample every 20-30 ms: the board's millis(), pitch, roll and yaw
in degrees (2 decimals), accelerations in g and the five flex readings. Lines starting with `#` are
information. It also takes `interval,<ms>`, `flush`, `recal` and `yawzero`, one per line.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

from signglove_exp.inference.stream import MAX_LINE

FIRMWARE_HEADER = "timestamp,pitch,roll,yaw,accel_x,accel_y,accel_z,flex1,flex2,flex3,flex4,flex5"
DEFAULT_BAUD = 115200
POLL_S = 0.1  # the read timeout: how often `stop` and the idle limit are checked while the glove is silent
_HEADER_START = FIRMWARE_HEADER.split(",")[0].encode() + b","


def serial_lines(
    port: str,
    baud: int = DEFAULT_BAUD,
    *,
    on_state: Callable[[str, str], None] | None = None,
    stop: threading.Event | None = None,
    retry_s: float = 0.5,
    idle_s: float | None = None,
) -> Iterator[bytes]:
    """The glove's header and sample lines, as bytes without the line ending, for `stream_rows`.

    A glove is unplugged, or not plugged in yet, far more often than it is broken: a port that fails
    to open or to read is tried again every `retry_s` seconds, never an exception. On each connection
    the header is asked for, and the lines before it are dropped: the port may have opened mid-line,
    and the columns are unknown until the header names them (a glove plugged in again may run other
    firmware). Malformed lines are passed on: `stream_rows` skips them with a note.

    `on_state(kind, message)` hears what the user should see, one line of text without the port:
    "connected"; "disconnected" (an unplug, or a port that is not there: once per outage, not once
    per retry); "info" (a `#` line, without the `#`). Without `on_state` each is a line on stderr.
    Ends when `stop` is set (checked every POLL_S seconds) or, with `idle_s`, after that many seconds
    without a line, connected or not.
    """
    import serial  # pyserial: only the serial source needs it

    stop = stop or threading.Event()
    report = on_state or (
        lambda _kind, message: print(f"glove {port}: {message}", file=sys.stderr, flush=True)
    )
    last_line = time.monotonic()

    def idle_left() -> float:
        return float("inf") if idle_s is None else last_line + idle_s - time.monotonic()

    def ended() -> bool:
        return stop.is_set() or idle_left() <= 0

    retrying = f"retrying every {retry_s:g} s"
    outage_reported = False
    while not ended():
        try:
            # exclusive: a second reader of the port would take every other line from the first
            glove = serial.Serial(port, baud, timeout=POLL_S, exclusive=True)
        except OSError as e:  # pyserial's SerialException is an OSError
            if not outage_reported:
                report("disconnected", f"not connected ({_reason(e)}), {retrying}")
                outage_reported = True
            stop.wait(max(0.0, min(retry_s, idle_left())))
            continue
        report("connected", f"connected, {baud} baud")
        outage_reported = False
        try:
            with glove:
                glove.write(b"header\n")
                header_seen = False
                for line in _read_lines(glove, ended):
                    if line.startswith(b"#"):
                        report("info", line[1:].decode("utf-8", "replace").strip())
                    elif header_seen or line.startswith(_HEADER_START):
                        header_seen = True
                        last_line = time.monotonic()
                        yield line
        except OSError as e:  # an unplug: EOF, or EIO from the port (Linux)
            report("disconnected", f"disconnected ({_reason(e)}), {retrying}")
            outage_reported = True


def _read_lines(glove, ended: Callable[[], bool]) -> Iterator[bytes]:
    """Whole lines as they arrive, until `ended()`; a run of bytes without a newline is cut at
    MAX_LINE, so a glitch cannot grow without bound (`stream_rows` refuses the over-long piece)."""
    pending = b""
    while not ended():
        pending += glove.read(glove.in_waiting or 1)
        *lines, pending = pending.split(b"\n")
        if len(pending) > MAX_LINE:
            lines.append(pending)
            pending = b""
        for line in lines:
            yield line.rstrip(b"\r")


def _reason(error: OSError) -> str:
    """The system's words when there is an errno (pyserial repeats the port in its own), else its message."""
    if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK):  # the exclusive lock is held
        return "in use by another program"
    return os.strerror(error.errno) if error.errno else str(error)
