"""Recognise jamo from episode files or a live glove stream.

    python -m signglove_exp.recognize MODEL episode.csv folder/ [--out predictions.csv]
    glove-reader | python -m signglove_exp.recognize MODEL --stream -      # live, from stdin
    python -m signglove_exp.recognize MODEL --stream capture.csv --follow  # a growing file
    python -m signglove_exp.recognize MODEL --serial /dev/ttyACM0          # the glove itself, over USB

MODEL is a checkpoint, an .onnx file, an MLflow run id or a runs:/ or models:/ URI.
A file the model cannot read is reported and listed in --out with its `problem`; the other files are
still recognised, and the command then exits with status 1.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from signglove_exp import command
from signglove_exp.inference.glove import DEFAULT_BAUD, serial_lines
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
    from signglove_exp.inference.stream import StreamHeaderError, recognise_stream, stream_rows

    events = []
    try:
        for event in recognise_stream(rec, stream_rows(lines, rec.channels), settings):
            print(f"{event['sample']}\t{event['jamo']}\t{event['confidence']:.3f}", flush=True)
            events.append(event)
    except StreamHeaderError as e:  # the signs so far are printed; refuse the rest in one line
        sys.exit(f"Error: {e}")
    return events


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.recognize", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a checkpoint, a .onnx file, an MLflow run id or model URI")
    ap.add_argument("inputs", nargs="*", help="episode CSV files or folders of them")
    ap.add_argument("--out", type=Path, help="also write the predictions to this CSV file")
    ap.add_argument(
        "--tracking-uri", help="for a run id: default $MLFLOW_TRACKING_URI, else outputs/mlflow.db"
    )
    live = ap.add_mutually_exclusive_group()
    live.add_argument(
        "--stream", metavar="SOURCE", help="recognise a live CSV stream: a file, or - for stdin"
    )
    live.add_argument(
        "--serial",
        metavar="PORT",
        help="recognise the glove on this serial port; waited for if not there, through unplugs",
    )
    ap.add_argument("--baud", type=int, default=DEFAULT_BAUD, help=f"with --serial (default {DEFAULT_BAUD})")
    ap.add_argument("--follow", action="store_true", help="with --stream FILE: wait for lines appended to it")
    ap.add_argument(
        "--idle",
        type=float,
        default=None,
        help="with --follow or --serial: stop after this many seconds without a line",
    )
    StreamSettings.add_arguments(ap)
    args = ap.parse_args(argv)
    if not (args.stream or args.serial):
        try:
            files = _episode_files(args.inputs)
        except FileNotFoundError as e:
            ap.error(str(e))
        if not files:
            ap.error("no episode files given (or use --stream or --serial)")
    from signglove_exp.inference.recognizer import Recognizer

    rec = Recognizer.load(args.model, args.tracking_uri)
    rec.check_standalone(args.model)
    if args.stream or args.serial:
        # bytes lines: stream_rows decodes each one, so a line that is not UTF-8 is skipped, not fatal
        settings = StreamSettings.from_args(args)
        if args.serial:  # the glove's connects, unplugs and `#` lines: one line each on stderr
            return _print_stream(rec, serial_lines(args.serial, args.baud, idle_s=args.idle), settings)
        if args.stream == "-":
            return _print_stream(rec, sys.stdin.buffer, settings)
        if args.follow:
            return _print_stream(rec, follow(Path(args.stream), idle_s=args.idle), settings)
        with open(args.stream, "rb") as lines:
            return _print_stream(rec, lines, settings)
    return _recognise_files(rec, files, args.out)


def _recognise_files(rec, files: list[Path], out: Path | None) -> list[dict]:
    """One row per file, good or bad: a bad file must not cost the predictions already made."""
    from signglove_exp.data import BadEpisodeError

    tops = [f"top{i}" for i in range(1, min(3, len(rec.classes)) + 1)]
    rows = []
    for path in files:
        row = dict.fromkeys(["file", "jamo", "latency_ms", *tops, "problem"], "") | {"file": str(path)}
        started = time.perf_counter()
        try:
            pred = rec.predict(rec.read(path))
        except BadEpisodeError as e:
            print(f"skipped {e}", file=sys.stderr)
            rows.append(row | {"problem": str(e).removeprefix(f"{path}: ")})
            continue
        latency = (time.perf_counter() - started) * 1000
        top = pred.top(len(tops))
        scores = {t: f"{j} {p:.3f}" for t, (j, p) in zip(tops, top, strict=True)}
        rows.append(row | {"jamo": pred.jamo, "latency_ms": latency, **scores})
        print(f"{path}\t{pred.jamo}\t" + "  ".join(f"{j} {p:.3f}" for j, p in top) + f"\t{latency:.2f} ms")
    if out:
        with open(out, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    bad = sum(bool(r["problem"]) for r in rows)
    if bad:
        where = f", listed with their problem in {out}" if out else ""
        print(f"{bad} of {len(rows)} file(s) could not be recognised{where}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    command(lambda: sys.exit(1 if any(r.get("problem") for r in main()) else 0))
