"""Recognise jamo from episode files or a live glove stream.

    python -m signglove_exp.recognize MODEL episode.csv folder/ [--out predictions.csv]
    glove-reader | python -m signglove_exp.recognize MODEL --stream -      # live, from stdin
    python -m signglove_exp.recognize MODEL --stream capture.csv --follow  # a growing file

MODEL is a checkpoint, an .onnx file, an MLflow run id or a runs:/ or models:/ URI.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from dataclasses import fields
from pathlib import Path

from signglove_exp.inference.stream import StreamSettings, follow


def _episode_files(inputs: list[str]) -> list[Path]:
    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(p.rglob("*.csv"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def _print_stream(rec, lines, settings: StreamSettings) -> list[dict]:
    from signglove_exp.inference.stream import recognise_stream, stream_rows

    events = []
    for event in recognise_stream(rec, stream_rows(lines, rec.channels), settings):
        print(f"{event['sample']}\t{event['jamo']}\t{event['confidence']:.3f}", flush=True)
        events.append(event)
    return events


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.recognize", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a checkpoint, a .onnx file, an MLflow run id or model URI")
    ap.add_argument("inputs", nargs="*", help="episode CSV files or folders of them")
    ap.add_argument("--out", type=Path, help="also write the predictions to this CSV file")
    ap.add_argument(
        "--tracking-uri", help="for a run id: default $MLFLOW_TRACKING_URI, else outputs/mlflow.db"
    )
    ap.add_argument("--stream", metavar="SOURCE", help="recognise a live CSV stream: a file, or - for stdin")
    ap.add_argument("--follow", action="store_true", help="with --stream FILE: wait for lines appended to it")
    ap.add_argument(
        "--idle", type=float, default=None, help="with --follow: stop after this many idle seconds"
    )
    for f in fields(StreamSettings):
        help_text = f"streaming: {f.metadata['help']} (default {f.default})"
        ap.add_argument(
            f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, help=help_text
        )
    args = ap.parse_args(argv)
    from signglove_exp.inference.recognizer import Recognizer

    rec = Recognizer.load(args.model, args.tracking_uri)
    if args.stream:
        settings = StreamSettings(**{f.name: getattr(args, f.name) for f in fields(StreamSettings)})
        if args.stream == "-":
            lines = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
            return _print_stream(rec, lines, settings)
        if args.follow:
            return _print_stream(rec, follow(Path(args.stream), idle_s=args.idle), settings)
        with open(args.stream, encoding="utf-8") as lines:
            return _print_stream(rec, lines, settings)
    files = _episode_files(args.inputs)
    if not files:
        ap.error("no episode files given (or use --stream)")
    rows = []
    for path in files:
        started = time.perf_counter()
        pred = rec.predict(rec.read(path))
        latency = (time.perf_counter() - started) * 1000
        top = pred.top(3)
        rows.append(
            {
                "file": str(path),
                "jamo": pred.jamo,
                "latency_ms": latency,
                **{f"top{i}": f"{j} {p:.3f}" for i, (j, p) in enumerate(top, 1)},
            }
        )
        print(f"{path}\t{pred.jamo}\t" + "  ".join(f"{j} {p:.3f}" for j, p in top) + f"\t{latency:.2f} ms")
    if args.out:
        with open(args.out, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
