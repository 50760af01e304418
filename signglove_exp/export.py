"""ONNX export, for deployment without torch: `python -m signglove_exp.export MODEL [--out model.onnx]`."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.export", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a checkpoint file, an MLflow run id or a runs:/ or models:/ URI")
    ap.add_argument("--out", type=Path, help="default: next to the checkpoint, .onnx")
    ap.add_argument(
        "--tracking-uri", help="for a run id: default $MLFLOW_TRACKING_URI, else outputs/mlflow.db"
    )
    args = ap.parse_args(argv)
    if Path(args.model).suffix == ".onnx":
        ap.error(f"{args.model} is already an ONNX file")

    from signglove_exp.inference.onnx_export import export_onnx
    from signglove_exp.inference.recognizer import Recognizer

    rec = Recognizer.load(args.model, args.tracking_uri)
    if args.out:
        out = args.out
    elif Path(args.model).is_file():
        out = Path(args.model).with_suffix(".onnx")
    else:
        out = Path(f"{rec.card.name}-{''.join(c for c in args.model if c.isalnum())[-12:]}.onnx")
    path = export_onnx(rec.net, rec.card, out)
    print(f"{rec.card.name} exported to {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return path


if __name__ == "__main__":
    main()
