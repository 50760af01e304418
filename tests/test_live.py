"""The glove, live: `python -m signglove_exp.serve` as a real uvicorn process on 127.0.0.1, spoken to in
upstream KLP-SignGlove's format, fed by POSTed samples or by a pseudo-terminal glove, watched by a real
headless Chromium on /live."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from signglove_exp.card import CARD_KEY, read_checkpoint
from signglove_exp.inference.glove import FIRMWARE_HEADER
from signglove_exp.inference.hangul import compose
from signglove_exp.inference.recognizer import Recognizer
from tests.conftest import cli_env, empty_store, free_port, run_module
from tests.test_glove import FakeGlove, firmware_lines
from tests.test_readme import CHECKS, LIVE
from tests.test_recognize import REFERENCE, test_split  # noqa: F401 (a fixture)


@pytest.mark.parametrize(
    "jamo, text",
    [
        ("ㅎㅏㄴ", "한"),
        ("ㅎㅏㄴㄱㅡㄹ", "한글"),
        ("ㅎㅏㄴㅏ", "하나"),  # a final followed by a vowel starts the next syllable
        ("ㄷㅏㄹㄱ", "닭"),  # two finals join
        ("ㄷㅏㄹㄱㅏ", "달가"),  # and split again before a vowel
        ("ㄱㅗㅏ", "과"),  # two vowels join
        ("ㅇㅏㄴㄴㅕㅇㅎㅏㅅㅔㅇㅛ", "안녕하세요"),
        ("ㄱㄴㅏ", "ㄱ나"),  # a consonant with no vowel stays a jamo
        ("ㅏㅎ", "ㅏㅎ"),
        ("ㅎㅏ ㄴ", "하 ㄴ"),  # a space ends the syllable
    ],
)
def test_jamo_compose_into_hangul_syllables(jamo, text):
    assert compose(jamo) == text


def start_serve(tmp: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """A real `python -m signglove_exp.serve ARGS` process with its own port, store and outputs;
    returns (process, base URL)."""
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_store(), tmp / "mlflow.db")
    port = free_port()
    log = open(tmp / "serve.log", "w", encoding="utf-8")  # noqa: SIM115 (the process writes it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "signglove_exp.serve", *args, "--port", str(port)]
        + ["--outputs", str(tmp / "outputs"), "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"],
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=cli_env() | {"OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    deadline = time.time() + 90
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            assert proc.poll() is None, (tmp / "serve.log").read_text()
            assert time.time() < deadline, "serve did not start"
            time.sleep(0.2)


def stop_serve(proc: subprocess.Popen) -> None:
    proc.send_signal(2)  # Ctrl-C: uvicorn's own shutdown
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def call(base: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    """One HTTP request (POST when there is a body); the status and the decoded JSON answer."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request("GET" if payload is None else "POST", path, payload, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


class Events:
    """A server-sent events client: (kind, data) as they come."""

    def __init__(self, base: str):
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=20)
        self.conn.request("GET", "/events")
        self.resp = self.conn.getresponse()
        assert self.resp.headers["content-type"].startswith("text/event-stream")

    def next(self) -> tuple[str, dict]:
        kind, data = None, None
        while True:
            line = self.resp.readline().decode("utf-8").rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif not line and kind:
                return kind, data

    def until(self, kind: str, n: int = 1) -> list[dict]:
        """The data of the next `n` events of `kind` (others pass by)."""
        got = []
        while len(got) < n:
            k, data = self.next()
            if k == kind:
                got.append(data)
        return got

    def close(self) -> None:
        self.conn.close()


def values_of(root: Path, episode) -> np.ndarray:
    return Recognizer.load(REFERENCE).read(root / episode.path)


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    """serve without a glove: samples come by POST /samples."""
    tmp = tmp_path_factory.mktemp("plain")
    proc, base = start_serve(tmp, str(REFERENCE))
    yield base
    stop_serve(proc)
    assert proc.returncode == 130 and "Traceback" not in (tmp / "serve.log").read_text()


def first_of_each(episodes, jamo: str) -> list:
    return [next(e for e in episodes if e.jamo == j) for j in jamo]


def test_predict_answers_in_upstreams_format_what_recognize_answers(plain_server, test_split):  # noqa: F811
    root, episodes = test_split
    rec = Recognizer.load(REFERENCE)
    for e in episodes[:12]:
        values = rec.read(root / e.path)
        held = np.concatenate([values, values[-7:]])  # upstream's window: 87 samples of a held sign
        for window in (values, held):
            status, got = call(
                plain_server, "/predict", {"data": window.tolist(), "top_k": 5, "normalize": True}
            )
            assert status == 200, got
            want = rec.predict(window)
            assert got["predicted_class"] == want.jamo
            assert got["predicted_class_idx"] == rec.classes.index(want.jamo)
            assert got["confidence"] == pytest.approx(want.confidence, abs=1e-6)
            top = got["top_k_predictions"]
            assert [t["class"] for t in top] == [j for j, _ in want.top(5)]
            for t in top:  # the names upstream's page and bridge read, and the ones its server sends
                assert t["class_name"] == t["class"] and t["probability"] == t["confidence"]
                assert t["class_idx"] == rec.classes.index(t["class"])
                assert t["confidence"] == pytest.approx(want.probabilities[t["class"]], abs=1e-6)
    status, latest = call(plain_server, "/latest")
    assert status == 200 and latest["result"] == got and latest["ts"] > time.time() - 60
    assert call(plain_server, "/health") == (
        200,
        {"status": "ok", "model": "gru", "glove": "samples by POST /samples"},
    )
    status, model = call(plain_server, "/model")
    assert model["card"]["classes"] == rec.classes and model["card"]["seq_len"] == rec.card.seq_len


def test_bad_requests_are_a_one_line_4xx_and_the_service_goes_on(plain_server, test_split):  # noqa: F811
    row = [800.0] * 5 + [1.0, 2.0, 3.0]
    cases = [
        (b'{"data": [[1, 2', 400, "request body is not JSON"),
        (b"[1, 2]", 400, "a JSON list, expected an object"),
        (json.dumps({"top_k": 5}).encode(), 400, "'data' must be a list of samples"),
        (json.dumps({"data": []}).encode(), 400, "'data' is empty"),
        (json.dumps({"data": [row[:7]]}).encode(), 400, "data[0] is 7 values, expected 8: [flex1"),
        (json.dumps({"data": [row, "x"]}).encode(), 400, "data[1] is a str"),
        (json.dumps({"data": [row, [*row[:2], "a", *row[3:]]]}).encode(), 400, 'data[1][2] (flex3) is "a"'),
        (b'{"data": [[1, 2, 3, 4, 5, 6, 7, NaN]]}', 400, "data[0][7] (yaw) is nan, not a finite number"),
        (b'{"data": [[1, 2, 3, 4, 5, 6, Infinity, 8]]}', 400, "data[0][6] (roll) is inf"),
        (json.dumps({"data": [[1] * 8] * 100_000}).encode(), 413, "'data' has 100000 samples; at most 2000"),
        (json.dumps({"data": [row], "top_k": 99}).encode(), 400, "'top_k' is 99"),
        (json.dumps({"data": [row], "normalize": False}).encode(), 400, "'normalize' must be true"),
        (b"x" * 5_000_000, 413, "request body of 5000000 bytes"),
    ]
    for raw, status, detail in cases:
        got_status, got = call(plain_server, "/predict", raw=raw)
        assert (got_status, list(got)) == (status, ["detail"]), (raw[:60], got)
        assert detail in got["detail"] and "\n" not in got["detail"], got
    # a client that goes away halfway through its request
    host, port = plain_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"data": [[')
    root, episodes = test_split
    status, got = call(plain_server, "/predict", {"data": values_of(root, episodes[0]).tolist()})
    assert status == 200 and got["predicted_class"] == episodes[0].jamo


def test_posted_samples_are_segmented_spelled_and_told_to_every_subscriber(plain_server, test_split):  # noqa: F811
    root, episodes = test_split
    call(plain_server, "/text", {"action": "clear"})
    first, second = Events(plain_server), Events(plain_server)
    hello = first.until("hello")[0]
    assert hello["model"]["name"] == "gru" and hello["glove"]["state"] == "samples by POST /samples"
    second.until("hello")
    for e in first_of_each(episodes, "ㅎㅏㄴ"):
        values = values_of(root, e)
        for start in range(0, len(values), 10):  # as a client would: a few samples at a time
            assert call(plain_server, "/samples", {"data": values[start : start + 10].tolist()})[0] == 200
    signs = first.until("sign", 3)
    assert [s["jamo"] for s in signs] == ["ㅎ", "ㅏ", "ㄴ"]
    assert [s["text"] for s in signs] == ["ㅎ", "하", "한"]
    assert [len(s["top"]) for s in signs] == [3, 3, 3] and all(s["top"][0][0] == s["jamo"] for s in signs)
    assert [s["jamo"] for s in second.until("sign", 3)] == ["ㅎ", "ㅏ", "ㄴ"]
    first.close()  # a subscriber gone mid-stream: the others and the service go on
    for e in first_of_each(episodes, "ㅏ"):
        call(plain_server, "/samples", {"data": values_of(root, e).tolist()})
    assert second.until("sign")[0]["text"] == "하나"
    assert call(plain_server, "/latest")[1]["result"]["predicted_class"] == "ㅏ"
    assert call(plain_server, "/text", {"action": "backspace"}) == (200, {"text": "한"})
    assert second.until("text")[0] == {"text": "한"}
    assert call(plain_server, "/text", {"action": "undo"})[0] == 400
    second.close()
    assert call(plain_server, "/health")[0] == 200


def test_serve_refuses_a_per_signer_base_model_in_one_line(tmp_path):
    card, state, _ = read_checkpoint(REFERENCE)
    card.preprocess = {**card.preprocess, "normalize": "per_signer"}
    model = tmp_path / "per-signer.ckpt"
    torch.save({"state_dict": state, CARD_KEY: card.to_dict()}, model)
    proc = run_module("signglove_exp.serve", str(model), "--port", str(free_port()), cwd=tmp_path)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"Error: {model}: this model normalises per signer") and "calibrate" in line


LEAD_IN = 5  # the glove server's --lead-in
README_SERVE = "python -m signglove_exp.serve model.ckpt --serial /dev/ttyACM0"


@pytest.fixture(scope="module")
def glove_server(tmp_path_factory):
    """The README's serve command with a pseudo-terminal glove for /dev/ttyACM0; (base URL, glove, folder)."""
    assert CHECKS[README_SERVE] == LIVE
    tmp = tmp_path_factory.mktemp("gloved")
    with FakeGlove(tmp / "usb-glove") as glove:
        words = README_SERVE.replace("model.ckpt", str(REFERENCE)).replace("/dev/ttyACM0", str(glove.link))
        proc, base = start_serve(tmp, *words.split()[3:], "--lead-in", str(LEAD_IN))
        glove.wait_for("header")
        yield base, glove, tmp
        stop_serve(proc)
    assert "Traceback" not in (tmp / "serve.log").read_text()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by playwright (no browser download), as the machine's notes start it."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on this machine (Debian's package chromium): the live page is not tested")
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=[*flags, "--disable-sync", "--no-first-run"]
        )
        yield browser
        browser.close()


def shows(page, selector: str, test: str, timeout_s: float = 20) -> None:
    """Wait until the element's text passes `test`, a JS expression of `t`."""
    text = f"document.querySelector({json.dumps(selector)}).textContent"
    page.wait_for_function(
        f"(() => {{ const t = {text}; return {test}; }})()",
        timeout=timeout_s * 1000,
    )


def test_the_live_page_spells_what_the_glove_signs_and_shows_the_glove(glove_server, browser, test_split):  # noqa: F811
    base, glove, _ = glove_server
    root, episodes = test_split
    call(base, "/text", {"action": "clear"})
    tabs = [browser.new_page() for _ in range(2)]  # a second tab sees the same
    for tab in tabs:
        tab.goto(f"{base}/live")
        shows(tab, "#glove-state", "t.startsWith('connected')")
        assert tab.text_content("#model-name") == "gru"
    lines = firmware_lines(root, first_of_each(episodes, "ㅎㅏㄴㄱㅡㄹ"))
    glove.play(lines[:200], pace_s=0.001)
    tabs[1].close()  # a tab closed while the glove streams
    glove.play(lines[200:], pace_s=0.001)
    page = tabs[0]
    shows(page, "#text", "t === '한글'")
    page.wait_for_function("document.fonts.check('16px Nanum', '한')")  # the bundled Hangul font took
    assert page.text_content("#sign-jamo") == "ㄹ"
    top = page.locator("#sign-top > div").all_text_contents()
    assert len(top) == 3 and top[0].startswith("ㄹ 0.9")
    assert int(page.text_content("#samples")) >= len(lines)
    inked = "(() => { const c = document.getElementById('traces'); const d = c.getContext('2d')"
    inked += ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4)"
    inked += " n += d[i] > 0; return n; })()"
    assert page.evaluate(inked) > 2000  # the eight traces are drawn
    assert [s["jamo"] for s in page.evaluate("window.signLog")] == list("ㅎㅏㄴㄱㅡㄹ")
    glove.drained()
    glove.unplug()
    shows(page, "#glove-state", "t.startsWith('disconnected')")
    assert page.get_attribute("#glove", "class") == "disconnected"
    glove.plug()
    shows(page, "#glove-state", "t.startsWith('connected')")
    glove.wait_for("header")
    glove.play(firmware_lines(root, first_of_each(episodes, "ㅏ")), pace_s=0.001)
    shows(page, "#text", "t === '한그라'")  # the final ㄹ moved on to the new syllable
    glove.write("timestamp,pitch,roll,yaw")  # firmware without the flex sensors: said, not guessed
    glove.play(["1,2.00,3.00,4.00"] * 3, pace_s=0.01)
    shows(page, "#glove-state", "t.includes('header lacks column(s) flex1, flex2, flex3, flex4, flex5')")
    assert page.get_attribute("#glove", "class") == "error"
    glove.write(FIRMWARE_HEADER)
    glove.play(firmware_lines(root, first_of_each(episodes, "ㄴ")), pace_s=0.001)
    shows(page, "#glove-state", "t.startsWith('connected')")
    shows(page, "#text", "t === '한그란'")
    late = browser.new_page()  # a tab opened now shows the state as it is
    late.goto(f"{base}/live")
    shows(late, "#text", "t === '한그란'")
    assert late.text_content("#sign-jamo") == "ㄴ"
    assert call(base, "/latest")[1]["result"]["predicted_class"] == "ㄴ"
    late.close()
    page.close()


def test_an_enrolment_through_the_page_ends_in_a_personal_model_run(glove_server, browser, test_split):  # noqa: F811
    base, glove, tmp = glove_server
    root, episodes = test_split
    whole = {}  # one whole-length episode of JY's per jamo
    for e in episodes:
        if e.signer == "JY" and len(e.values if e.values is not None else values_of(root, e)) == 80:
            whole.setdefault(e.jamo, e)
    page = browser.new_page()
    page.goto(f"{base}/live")
    shows(page, "#glove-state", "t.startsWith('connected')")
    page.fill("#enrol-name", "JY on the page")
    page.fill("#enrol-shots", "1")
    page.click("#enrol-start")
    for step in range(24):
        shows(page, "#enrol-status", f"t.includes('({step + 1} of 24,')")
        lines = firmware_lines(root, [whole[page.text_content("#enrol-jamo")]])
        glove.play([lines[0]] * LEAD_IN + lines, pace_s=0)  # the hand still, then the sign
    shows(page, "#enrol-status", "t.includes('your personal model is served')", timeout_s=90)
    assert page.text_content("#model-name") == "gru (personal)"
    run_id = page.text_content("#model-source").removeprefix("run ")
    page.close()
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.data.tags["signglove.enrolment"] == "JY on the page"
    assert run.data.params["method"] == "renorm+finetune_all:epochs=100:lr=0.003"  # the default method
    assert run.data.params["n_calibration"] == "24"
    recorded = client.list_artifacts(run_id, "enrolment")
    assert sorted(Path(a.path).name for a in recorded) == sorted(whole)
    personal = Recognizer.load(run_id, f"sqlite:///{tmp / 'mlflow.db'}")
    assert personal.card.lineage["source"] == str(REFERENCE) and personal.card.lineage["shots"] == 1
    assert call(base, "/model")[1]["run_id"] == run_id
    for e in list(whole.values())[:5]:  # the service now answers with the personal model's probabilities
        values = values_of(root, e)
        got = call(base, "/predict", {"data": values.tolist(), "top_k": 24})[1]["top_k_predictions"]
        want = personal.predict(values).probabilities
        assert {t["class"]: pytest.approx(t["probability"], abs=1e-6) for t in got} == want
