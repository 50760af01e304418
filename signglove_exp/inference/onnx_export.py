"""ONNX export, for deployment without torch.

The graph maps scaled, padded episodes `x` (batch, n_timepoints, n_channels) and `lengths` (batch,)
to class `probabilities`; the batch size is dynamic. The model card rides along as JSON metadata, so
`Recognizer.from_onnx(path)` needs nothing else.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from signglove_exp.card import CARD_KEY, ModelCard

OPSET = 17  # ONNX opset: GRU, Conv and the grid pooling all export at 17


class _Probabilities(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x, lengths), dim=1)


def export_onnx(net: nn.Module, card: ModelCard, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(2, card.seq_len, card.model["n_channels"])  # features, after the card's transforms
    lengths = torch.tensor([card.seq_len, 1])
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
    entry.key, entry.value = CARD_KEY, card.to_json()
    onnx.save(model, str(path))
    return path
