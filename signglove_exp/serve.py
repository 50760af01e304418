"""Serve a model over HTTP, live: upstream KLP-SignGlove's /predict, a live feed, and a page at /live.

python -m signglove_exp.serve MODEL [--host 127.0.0.1] [--port 8000] [--serial PORT [--baud 115200]]

MODEL is a checkpoint, an .onnx file, an MLflow run id, a runs:/ or models:/ URI, or a personal model
(`calibrate`'s run). With --serial the glove on PORT feeds the live page; without it, clients POST
samples to /samples. Open http://HOST:PORT/live to watch the text being spelled and to enrol a new
person (their personal model is logged as an MLflow run and served from then on).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

from signglove_exp import command, default_outputs
from signglove_exp.inference.glove import DEFAULT_BAUD
from signglove_exp.inference.stream import StreamSettings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.serve", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a checkpoint, a .onnx file, an MLflow run id or model URI")
    ap.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    ap.add_argument("--port", type=int, default=8000, help="default 8000")
    ap.add_argument("--serial", metavar="PORT", help="the glove's serial port (e.g. /dev/ttyACM0)")
    ap.add_argument("--baud", type=int, default=DEFAULT_BAUD, help=f"with --serial (default {DEFAULT_BAUD})")
    ap.add_argument(
        "--tracking-uri",
        help="for a run id, and for enrolled models: default $MLFLOW_TRACKING_URI, else outputs/mlflow.db",
    )
    ap.add_argument("--experiment", default="signglove", help="where enrolled personal models' runs go")
    ap.add_argument(
        "--outputs",
        type=Path,
        default=None,
        help="enrolment episodes and the default store (default ./outputs)",
    )
    ap.add_argument(
        "--engine",
        choices=["onnx", "torch"],
        default="onnx",
        help="what runs a checkpoint's network: ONNX Runtime (default; 5-10x faster per window) or PyTorch",
    )
    ap.add_argument("--method", help="enrolment's adaptation method (default: calibration.default_method)")
    ap.add_argument(
        "--lead-in",
        type=int,
        default=15,
        help="enrolment: samples let go after each prompt, while the hand takes the shape (default 15)",
    )
    ap.add_argument(
        "--max-samples",
        type=int,
        default=2000,
        help="longest window /predict and /samples take (default 2000)",
    )
    ap.add_argument(
        "--max-body", type=int, default=4_000_000, help="largest request body in bytes (default 4000000)"
    )
    StreamSettings.add_arguments(ap)
    args = ap.parse_args(argv)

    import numpy as np
    import uvicorn

    from signglove_exp.inference.live import EnrolSettings, LiveFeed, ServedModel
    from signglove_exp.inference.recognizer import Recognizer, source_run_of
    from signglove_exp.inference.service import Limits, build_app

    rec = Recognizer.load(args.model, args.tracking_uri)
    rec.check_standalone(args.model)
    exported = tempfile.TemporaryDirectory(prefix="signglove-serve-")
    engine = (lambda r: r.on_onnx_runtime(exported.name)) if args.engine == "onnx" else (lambda r: r)
    base = ServedModel(engine(rec) if rec.net is not None else rec, args.model, source_run_of(args.model))
    base.rec.predict(np.zeros((rec.card.seq_len, len(rec.channels))))  # set-up paid now, not by a client
    outputs = (args.outputs or default_outputs()).resolve()
    enrol = EnrolSettings(outputs, args.tracking_uri, args.experiment, args.method, args.lead_in)
    settings = StreamSettings.from_args(args)
    feed = LiveFeed(base, settings, enrol, args.serial, engine)
    stop = threading.Event()
    if args.serial:
        reader = threading.Thread(target=feed.read_serial, args=(args.serial, args.baud, stop), daemon=True)
        reader.start()
    app = build_app(feed, Limits(args.max_samples, args.max_body), glove_attached=bool(args.serial))
    server = uvicorn.Server(
        uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=1)
    )
    source = f"the glove on {args.serial}" if args.serial else "samples POSTed to /samples"
    print(f"Serving {rec.card.name} ({args.model}) on http://{args.host}:{args.port}", flush=True)
    print(f"Live page: http://{args.host}:{args.port}/live (fed by {source})", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn has shut down cleanly and passes Ctrl-C on
        sys.exit(130)
    finally:
        stop.set()
    if not server.started:  # the port was taken, say: uvicorn said why
        sys.exit(1)


if __name__ == "__main__":
    command(main)
