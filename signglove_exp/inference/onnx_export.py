"""ONNX export, for deployment without torch.

The graph maps scaled, padded episodes `x` (batch, n_timepoints, n_channels) and `lengths` (batch,)
to class `probabilities`; the batch size is dynamic. The model card rides along as JSON metadata, so
`Recognizer.from_onnx(path)` needs nothing else. The network is exported folded (`models.fold`: the
same outputs from fewer operators); with `int8` inputs its convolutions are also quantized to 8 bits,
calibrated on those inputs (ONNX Runtime static quantization): faster, and not exact.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from signglove_exp.card import CARD_KEY, ModelCard
from signglove_exp.models import fold

OPSET = 17  # ONNX opset: GRU, Conv and the grid pooling all export at 17
WEIGHTS_KEY = "signglove.weights"  # metadata: float32, or how the int8 convolutions were calibrated


class _Probabilities(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x, lengths), dim=1)


def export_onnx(
    net: nn.Module, card: ModelCard, path: str | Path, int8: tuple[np.ndarray, np.ndarray] | None = None
) -> Path:
    """`int8`: model inputs (x, lengths) to calibrate 8-bit convolutions on; None keeps float32."""
    if int8 is not None and not any(isinstance(m, nn.modules.conv._ConvNd) for m in net.modules()):
        raise ValueError(f"int8: {card.name} has no convolutions to quantize (its float32 graph is as fast)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(2, card.seq_len, card.model["n_channels"])  # features, after the card's transforms
    lengths = torch.tensor([card.seq_len, 1])
    batch = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on GRU batch sizes, not ours to act on
        torch.onnx.export(
            _Probabilities(fold(net)),
            (x, lengths),
            str(path),
            input_names=["x", "lengths"],
            output_names=["probabilities"],
            dynamic_axes={"x": batch, "lengths": batch, "probabilities": batch},
            opset_version=OPSET,
            dynamo=False,
        )
    weights = "float32"
    if int8 is not None:
        quantize(path, *int8)
        weights = f"int8 convolutions, calibrated on {len(int8[0])} episodes"
    model = onnx.load(str(path))
    for key, value in ((CARD_KEY, card.to_json()), (WEIGHTS_KEY, weights)):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def quantize(path: Path, x: np.ndarray, lengths: np.ndarray, batch_size: int = 32) -> None:
    """The ONNX file's convolutions in 8 bits, in place: per-channel int8 weights, uint8 activations
    whose ranges are read off (x, lengths). The recurrences and the head stay float32."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = (
                {"x": x[i : i + batch_size], "lengths": lengths[i : i + batch_size]}
                for i in range(0, len(x), batch_size)
            )

        def get_next(self):
            return next(self.batches, None)

    prepared = path.with_suffix(".prepared.onnx")
    try:
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(path),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"],
        )
    finally:
        prepared.unlink(missing_ok=True)
