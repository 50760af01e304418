"""ONNX export, for deployment without torch: `python -m signglove_exp.export MODEL [--out model.onnx]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from signglove_exp import command, default_outputs


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.export", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a checkpoint file, an MLflow run id or a runs:/ or models:/ URI")
    ap.add_argument(
        "--out",
        type=Path,
        help="default: a checkpoint's name with .onnx; for a run, OUTPUTS/models/<run id>/<model name>.onnx",
    )
    ap.add_argument(
        "--tracking-uri", help="for a run id: default $MLFLOW_TRACKING_URI, else outputs/mlflow.db"
    )
    ap.add_argument(
        "--outputs",
        type=Path,
        help="for a run: the outputs folder its checkpoint is cached under (default: the project's outputs/)",
    )
    ap.add_argument(
        "--int8",
        type=int,
        metavar="N",
        default=0,
        help="quantize the convolutions to 8 bits, calibrated on N episodes of the model's own training "
        "part (MS3D models; faster, not exact: `make bench` measures both)",
    )
    args = ap.parse_args(argv)
    if args.int8 < 0:
        ap.error(f"--int8 {args.int8}: a number of episodes >= 1")
    if Path(args.model).suffix == ".onnx":
        ap.error(f"{args.model} is already an ONNX file")

    from signglove_exp.inference.onnx_export import export_onnx
    from signglove_exp.inference.recognizer import Recognizer
    from signglove_exp.tracking.queries import download_checkpoint

    checkpoint, folder = Path(args.model), None
    if not checkpoint.is_file():  # a run: the .onnx goes beside its cached checkpoint, never into the cwd
        run = "".join(c if c.isalnum() else "_" for c in args.model)  # a run id as is; a URI made a name
        folder = (args.outputs or default_outputs()) / "models" / run
        checkpoint = download_checkpoint(args.model, args.tracking_uri, folder)
    rec = Recognizer.from_checkpoint(checkpoint)
    rec.check_standalone(args.model)  # an ONNX file reads episodes one by one
    out = args.out or (folder / f"{rec.card.name}.onnx" if folder else checkpoint.with_suffix(".onnx"))
    calibration = calibration_inputs(rec, args.int8) if args.int8 else None
    path = export_onnx(rec.net, rec.card, out, calibration)
    weights = f", int8 convolutions calibrated on {args.int8} training episodes" if args.int8 else ""
    print(f"{rec.card.name} exported to {path} ({path.stat().st_size / 1024:.0f} KiB{weights})")
    return path


def calibration_inputs(rec, n_episodes: int):
    """Model inputs of `n_episodes` episodes of the model's own training part, spread over it."""
    import numpy as np

    from signglove_exp import data
    from signglove_exp.inference.evaluation import episodes_to_evaluate

    corpus, idx, _ = episodes_to_evaluate(rec, None, part="train")
    chosen = [idx[int(i)] for i in np.linspace(0, len(idx) - 1, min(n_episodes, len(idx)))]
    return data.model_inputs([corpus.episodes[i].values for i in chosen], rec.card)


if __name__ == "__main__":
    command(main)
