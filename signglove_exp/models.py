"""The four reference architectures as plain nn.Modules taking (x, lengths) and returning logits.

x is (batch, n_timepoints, n_channels) in scaled units, lengths the number of real steps.
Attribute names follow upstream's state-dict keys (`RNN`, `tower1`, `output_layers`, ...) so its
checkpoints load as they are. Knows nothing of Lightning, Hydra, MLflow or files.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

READOUTS = ("last_real", "upstream")


def last_step(seq: torch.Tensor, lengths: torch.Tensor, pool: int, readout: str) -> torch.Tensor:
    """The recurrent output at each sequence's last real step, after a time pooling of factor `pool`.

    `upstream` reproduces how upstream's checkpoints were read: index -1 without pooling for the
    RNN models (`pool=0` marks them), and the unpooled index clamped to the pooled length otherwise.
    """
    n_steps = seq.shape[1]
    if readout == "last_real":
        idx = (lengths - 1) // max(pool, 1)
    elif readout == "upstream":
        idx = torch.full_like(lengths, n_steps - 1) if pool == 0 else lengths - 1
    else:
        raise ValueError(f"readout must be one of {READOUTS}, not {readout!r}")
    idx = idx.clamp(0, n_steps - 1).to(seq.device)
    return seq[torch.arange(seq.shape[0], device=seq.device), idx]


def rnn_head(hidden: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            output_layers=nn.Sequential(
                nn.Linear(hidden, 2 * hidden),
                nn.Dropout(dropout),
                nn.Tanh(),
                nn.Linear(2 * hidden, n_classes),
            )
        )
    )


def cnn_head(hidden: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * hidden, n_classes)
    )


class GRU(nn.Module):
    """One- or multi-layer GRU; `input_projection > 0` adds upstream's Linear(C -> P) before it."""

    PARTS = {"recurrent": ("RNN",), "head": ("output_layers",)}  # named groups, for fine-tuning

    def __init__(
        self,
        n_channels=8,
        n_classes=24,
        hidden=64,
        layers=1,
        dropout=0.2,
        input_projection=0,
        readout="last_real",
    ):
        super().__init__()
        rnn_dropout = dropout if layers > 1 else 0.0
        if input_projection:
            self.RNN = nn.Sequential(
                nn.Linear(n_channels, input_projection),
                nn.GRU(input_projection, hidden, layers, batch_first=True, dropout=rnn_dropout),
            )
        else:
            self.RNN = nn.GRU(n_channels, hidden, layers, batch_first=True, dropout=rnn_dropout)
        self.output_layers = rnn_head(hidden, n_classes, dropout)
        self.readout = readout

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if isinstance(self.RNN, nn.Sequential):
            seq, _ = self.RNN[1](self.RNN[0](x))
        else:
            seq, _ = self.RNN(x)
        return self.output_layers(last_step(seq, lengths, 0, self.readout))


def StackedGRU(n_channels=8, n_classes=24, hidden=64, layers=2, dropout=0.2, readout="last_real") -> GRU:
    """Upstream's StackedGRU is a GRU with two layers and dropout between them."""
    return GRU(n_channels, n_classes, hidden, layers, dropout, 0, readout)


class _MS3D(nn.Module):
    """Shared front of the MS3D models: channels on a grid, three 3D-conv towers of kernel 3/5/7."""

    def __init__(self, n_channels, filters, kernels, grid, time_pool, dropout, stacked_towers):
        super().__init__()
        rows, cols = grid or (4, -(-n_channels // 4))  # default: 4 rows (8 channels: upstream's 4 x 2)
        if n_channels > rows * cols:
            raise ValueError(f"{n_channels} channels do not fit a {rows} x {cols} grid")
        self.n_channels, self.grid, self.time_pool = n_channels, (rows, cols), time_pool
        for i, k in enumerate(kernels, start=1):
            layers = [nn.Conv3d(1, filters, k, padding=k // 2), nn.BatchNorm3d(filters), nn.ReLU()]
            if stacked_towers:
                layers += [nn.Conv3d(filters, filters, 3, padding=1), nn.BatchNorm3d(filters), nn.ReLU()]
            setattr(self, f"tower{i}", nn.Sequential(*layers))
        self.n_towers = len(kernels)
        width = filters * len(kernels)
        self.cnn_post = nn.Sequential(
            nn.BatchNorm3d(width), nn.ReLU(), nn.MaxPool3d((time_pool, rows, cols)), nn.Dropout3d(dropout)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T // time_pool, filters * towers); channel c in cell (c // cols, c % cols)."""
        b, t, c = x.shape
        rows, cols = self.grid
        if c < rows * cols:  # empty grid cells hold zeros (the mean, in scaled units)
            x = torch.cat([x, x.new_zeros(b, t, rows * cols - c)], dim=2)
        vol = x.reshape(b, 1, t, rows, cols)
        out = torch.cat([getattr(self, f"tower{i}")(vol) for i in range(1, self.n_towers + 1)], dim=1)
        return self.cnn_post(out).flatten(2).transpose(1, 2)


class MS3DGRU(_MS3D):
    PARTS = {"recurrent": ("gru",), "head": ("output_layers",)}

    def __init__(
        self,
        n_channels=8,
        n_classes=24,
        hidden=64,
        filters=32,
        kernels=(3, 5, 7),
        grid=None,
        time_pool=2,
        dropout=0.2,
        readout="last_real",
    ):
        super().__init__(n_channels, filters, kernels, grid, time_pool, dropout, stacked_towers=False)
        self.gru = nn.GRU(filters * len(kernels), hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.output_layers = cnn_head(hidden, n_classes, dropout)
        self.readout = readout

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        seq, _ = self.gru(self.features(x))
        return self.output_layers(self.dropout(last_step(seq, lengths, self.time_pool, self.readout)))


class MS3DStackedGRU(_MS3D):
    PARTS = {"recurrent": ("gru1", "gru2"), "head": ("output_layers",)}

    def __init__(
        self,
        n_channels=8,
        n_classes=24,
        hidden=64,
        filters=32,
        kernels=(3, 5, 7),
        grid=None,
        time_pool=1,
        dropout=0.2,
        readout="last_real",
    ):
        super().__init__(n_channels, filters, kernels, grid, time_pool, dropout, stacked_towers=True)
        self.gru1 = nn.GRU(filters * len(kernels), hidden, batch_first=True)
        self.gru2 = nn.GRU(hidden, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.output_layers = cnn_head(hidden, n_classes, dropout)
        self.readout = readout

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        seq, _ = self.gru1(self.features(x))
        seq, _ = self.gru2(self.dropout(seq))
        return self.output_layers(self.dropout(last_step(seq, lengths, self.time_pool, self.readout)))


ARCHITECTURES = {
    "gru": GRU,
    "stacked_gru": StackedGRU,
    "ms3d_gru": MS3DGRU,
    "ms3d_stacked_gru": MS3DStackedGRU,
}


def build_model(name: str, **hparams) -> nn.Module:
    """The one place a model name becomes a network; hparams are the model config less its name."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name](**hparams)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
