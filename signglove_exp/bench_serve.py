"""The live service under load: /predict latency at a steady request rate, and sign-to-screen latency.

    python -m signglove_exp.bench_serve [MODEL] [--rate 50] [--seconds 60]     (or: make bench-serve)

Starts `python -m signglove_exp.serve MODEL` (a real uvicorn process on 127.0.0.1) and, for
`--seconds`, sends /predict requests in upstream's format at `--rate` per second (open loop: each at
its planned time, from a pool of clients, so a slow answer delays no later request), each an 87-sample
window (upstream's default) of a real test-split episode. Meanwhile a simulated glove POSTs one sample
every 25 ms to /samples (test-split episodes back to back) and a headless Chromium (when there is one;
else a plain event-stream client) keeps /live open: sign-to-screen is the time from the arrival of the
sample that decided a sign to that sign's first frame on the page. The in-process `Recognizer.predict`
of the same windows, measured in the same run before the load, is the baseline of model time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from signglove_exp import BUNDLED_DIR, command

GLOVE_PERIOD_S = 0.025  # the firmware sends a sample every 20-30 ms


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _percentiles(values: list[float]) -> str:
    import numpy as np

    if not values:
        return "| - | - | - | 0 |"
    v = np.asarray(values)
    return f"| {np.percentile(v, 50):.2f} | {np.percentile(v, 99):.2f} | {v.max():.2f} | {len(v)} |"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(
        prog="python -m signglove_exp.bench_serve", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "model",
        nargs="?",
        default=str(BUNDLED_DIR / "pretrained" / "gru-reference.ckpt"),
        help="what to serve (default: the bundled GRU)",
    )
    ap.add_argument("--rate", type=float, default=50, help="/predict requests per second (default 50)")
    ap.add_argument("--seconds", type=float, default=60, help="how long the load lasts (default 60)")
    ap.add_argument("--port", type=int, default=8765, help="where the service listens (default 8765)")
    args = ap.parse_args(argv)

    import numpy as np

    from signglove_exp import data
    from signglove_exp.inference.recognizer import Recognizer
    from signglove_exp.training.cli import compose

    cfg = compose()
    corpus = data.load_corpus(
        data.ensure_unpacked(cfg.data), list(cfg.data.classes), list(cfg.data.channels), cfg.data.min_len
    )
    test = [corpus.episodes[i].values for i in data.split(corpus, cfg.split)["test"]]
    windows = [np.concatenate([v, np.repeat(v[-1:], 87 - len(v), axis=0)]) for v in test if len(v) <= 87]
    rec = Recognizer.load(args.model)
    for w in windows[:20]:
        rec.predict(w)  # warm-up
    baseline = []
    for w in windows[:500]:
        started = time.perf_counter()
        rec.predict(w)
        baseline.append((time.perf_counter() - started) * 1000)

    base = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "signglove_exp.serve", args.model, "--port", str(args.port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1).read()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"serve did not start: {server.stderr.read()[-2000:]}") from None
                time.sleep(0.3)
        screen, how = _watch(base)
        round_trip, model_ms, errors = [], [], []
        stop = threading.Event()
        glove = threading.Thread(target=_glove, args=(base, test, stop), daemon=True)

        def one(i: int, at: float) -> None:
            time.sleep(max(0.0, at - time.perf_counter()))
            started = time.perf_counter()
            try:
                answer = _post(f"{base}/predict", {"data": windows[i % len(windows)].tolist(), "top_k": 5})
                round_trip.append((time.perf_counter() - started) * 1000)
                model_ms.append(answer["model_ms"])
            except OSError as e:
                errors.append(str(e))

        glove.start()
        start, n = time.perf_counter() + 0.5, int(args.rate * args.seconds)
        with ThreadPoolExecutor(max_workers=8) as pool:
            for i in range(n):
                pool.submit(one, i, start + i / args.rate)
        stop.set()
        glove.join()
        latencies = screen()
    finally:
        server.terminate()
        server.wait(timeout=30)

    lines = [
        f"{args.model}: {n} /predict requests at {args.rate:g}/s over {args.seconds:g} s, "
        f"87-sample windows; a glove posting a sample every {GLOVE_PERIOD_S * 1000:.0f} ms meanwhile; "
        f"{len(errors)} failed",
        "",
        "| what | p50 ms | p99 ms | max ms | n |",
        "|---|---:|---:|---:|---:|",
        f"| /predict round trip (HTTP, JSON, model) {_percentiles(round_trip)}",
        f"| /predict model time, in the service {_percentiles(model_ms)}",
        f"| baseline: Recognizer.predict in-process (PyTorch, as recognize runs), no load "
        f"{_percentiles(baseline)}",
        f"| sign-to-screen ({how}) {_percentiles(latencies)}",
    ]
    table = "\n".join(lines)
    print(table)
    return table


def _glove(base: str, episodes, stop: threading.Event) -> None:
    """Test-split episodes back to back, one sample per POST at the glove's pace, as a bridge would."""
    step = 0
    while not stop.is_set():
        for row in episodes[step % len(episodes)]:
            if stop.is_set():
                return
            _post(f"{base}/samples", {"data": [row.tolist()]})
            time.sleep(GLOVE_PERIOD_S)
        step += 1


def _watch(base: str):
    """Open /live in Chromium (or an event-stream client); returns (collect(), what was measured):
    collect() gives each sign's milliseconds from its deciding sample's arrival to the screen."""
    chromium = shutil.which("chromium")
    if chromium:
        from playwright.sync_api import sync_playwright

        pw = sync_playwright().start()
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()
        page.goto(f"{base}/live")

        def collect() -> list[float]:
            out = [s["latency_ms"] for s in page.evaluate("window.signLog")]
            browser.close()
            pw.stop()
            return out

        return collect, "Chromium, first frame after the event"
    got: list[float] = []

    def listen() -> None:
        with urllib.request.urlopen(f"{base}/events", timeout=600) as stream:
            kind = None
            for raw in stream:
                line = raw.decode("utf-8").rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "sign":
                    got.append(time.time() * 1000 - json.loads(line[6:])["arrived_ms"])

    threading.Thread(target=listen, daemon=True).start()
    return (lambda: list(got)), "event-stream client, no browser"


if __name__ == "__main__":
    command(main)
