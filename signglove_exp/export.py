"""ONNX export, for deployment without torch: `python -m signglove_exp.export MODEL [--out model.onnx]`.

The graph maps scaled, padded episodes `x` (batch, n_timepoints, n_channels) and `lengths` (batch,)
to class `probabilities`; the batch size is dynamic. The model's metadata (classes, channels, scaler,
padding, ...) rides along as JSON in the file, so `Recognizer.from_onnx(path)` needs nothing else.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from signglove_exp.recognize import META_KEY, Recognizer

OPSET = 17  # ONNX opset: GRU, Conv3d and MaxPool3d all export at 17


class _Probabilities(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x, lengths), dim=1)


def export_onnx(net: nn.Module, meta: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(2, meta["seq_len"], len(meta["channels"]))
    lengths = torch.tensor([meta["seq_len"], 1])
    batch = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on GRU batch sizes, not ours to act on
        torch.onnx.export(
            _Probabilities(net).eval(),
            (x, lengths),
            str(path),
            input_names=["x", "lengths"],
            output_names=["probabilities"],
            dynamic_axes={"x": batch, "lengths": batch, "probabilities": batch},
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta, ensure_ascii=False)
    onnx.save(model, str(path))
    return path


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.export", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a checkpoint file or an MLflow run id")
    ap.add_argument("--out", type=Path, help="default: next to the checkpoint, .onnx")
    ap.add_argument(
        "--tracking-uri", help="for a run id: default $MLFLOW_TRACKING_URI, else outputs/mlflow.db"
    )
    args = ap.parse_args(argv)
    if Path(args.model).suffix == ".onnx":
        ap.error(f"{args.model} is already an ONNX file")
    rec = Recognizer.load(args.model, args.tracking_uri)
    if args.out:
        out = args.out
    elif Path(args.model).is_file():
        out = Path(args.model).with_suffix(".onnx")
    else:
        out = Path(f"{rec.meta['model']['name']}-{args.model[:8]}.onnx")
    path = export_onnx(rec.net, rec.meta, out)
    print(f"{rec.meta['model']['name']} exported to {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return path


if __name__ == "__main__":
    main()
