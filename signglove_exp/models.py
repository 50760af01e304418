"""The four reference architectures as plain nn.Modules taking (x, lengths) and returning logits.

x is (batch, n_timepoints, n_channels) in scaled units, lengths the number of real steps.
Attribute names follow upstream's state-dict keys (`RNN`, `tower1`, `output_layers`, ...) so its
checkpoints load as they are. Knows nothing of Lightning, Hydra, MLflow or files.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

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
        x = x[:, : recurrent_steps(lengths, x.shape[1], 0, self.readout)]
        if isinstance(self.RNN, nn.Sequential):
            seq, _ = self.RNN[1](self.RNN[0](x))
        else:
            seq, _ = self.RNN(x)
        return self.output_layers(last_step(seq, lengths, 0, self.readout))


def StackedGRU(n_channels=8, n_classes=24, hidden=64, layers=2, dropout=0.2, readout="last_real") -> GRU:
    """Upstream's StackedGRU is a GRU with two layers and dropout between them."""
    return GRU(n_channels, n_classes, hidden, layers, dropout, 0, readout)


class GridConv3d(nn.Conv3d):
    """Upstream's Conv3d over a (time, rows, cols) volume, computed as exact 1-D convolutions over time.

    Over a grid this small, a 3-D convolution with zero padding is a convolution over time whose
    input channels are (cell, channel) pairs and whose outputs are (cell, filter) pairs, with weights
    gathered from the 3-D kernel. Each row of output cells only sees the input rows within the
    kernel's reach, so it gets its own convolution over just those: a 3 x 3 kernel on a 4 x 2 grid
    then does 40 of the 64 cell-pair products. The parameters keep upstream's Conv3d shapes, so
    checkpoints and state-dict keys are unchanged. Tensors are (batch, cells * channels, n_timepoints).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, grid: tuple[int, int]):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        rows, cols, half = *grid, kernel_size // 2
        cells = [(r, c) for r in range(rows) for c in range(cols)]
        # position of input cell j, seen from output cell i, in the flattened (k, k) spatial kernel;
        # k * k (one past the end) points at an appended zero where j is out of reach
        where = [
            [
                (rj - ri + half) * kernel_size + (cj - ci + half)
                if abs(rj - ri) <= half and abs(cj - ci) <= half
                else kernel_size * kernel_size
                for rj, cj in cells
            ]
            for ri, ci in cells
        ]
        self.register_buffer("cell_index", torch.tensor(where).flatten(), persistent=False)
        self.n_cells = len(cells)
        # per output row: (first, last + 1) output cell and (first, last + 1) input cell in reach
        self.row_blocks = [
            (r * cols, (r + 1) * cols, max(r - half, 0) * cols, min(r + half + 1, rows) * cols)
            for r in range(rows)
        ]

    def cell_weights(self) -> torch.Tensor:
        """(out cells, filters, in cells, channels, k) from the (filters, channels, k, k, k) kernel."""
        f, c, k = self.weight.shape[:3]
        n = self.n_cells
        spatial = torch.cat([self.weight.flatten(3), self.weight.new_zeros(f, c, k, 1)], dim=3)
        w = spatial.index_select(3, self.cell_index).view(f, c, k, n, n)
        return w.permute(3, 0, 4, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.cell_weights()
        _, f, _, c, k = w.shape
        blocks = []
        for o0, o1, i0, i1 in self.row_blocks:
            block_w = w[o0:o1, :, i0:i1].reshape((o1 - o0) * f, (i1 - i0) * c, k)
            bias = None if self.bias is None else self.bias.repeat(o1 - o0)
            blocks.append(F.conv1d(x[:, i0 * c : i1 * c], block_w, bias, padding=k // 2))
        return torch.cat(blocks, dim=1)


class GridBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d on (batch, cells * channels, n_timepoints): the same statistics and state."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, cc, t = x.shape
        per_cell = x.view(b * (cc // self.num_features), self.num_features, t, 1, 1)
        return super().forward(per_cell).view(b, cc, t)


class _NormReluMax(torch.autograd.Function):
    """Training-mode batch norm, ReLU and max over cells (`GridPost`), computed with the max first.

    Forward, the batch statistics need one read of the (batch, cells, filters, T) input; the max over
    cells needs another; the affine map and ReLU then run on 1/cells of the values. Backward is
    written out: the statistics' gradient is one per-filter `x * a + c` pass, and the max's gradient
    goes to the cells holding the max (shared between tied cells, as `amax` does). No normalised or
    ReLU copy of the big tensor is written or kept.
    """

    @staticmethod
    def forward(ctx, v, weight, bias, bn: nn.BatchNorm3d, momentum: float):
        b, n, f, t = v.shape
        with torch.no_grad():  # the same kernel and running-statistics update as nn.BatchNorm3d
            mean, var = torch.batch_norm_update_stats(
                v.view(b * n, f, t), bn.running_mean, bn.running_var, momentum
            )
        rstd = torch.rsqrt(var + bn.eps)
        scale = weight * rstd
        shift = bias - mean * scale
        pooled = v.amax(dim=1)
        if (scale < 0).any():  # those filters' affine map is decreasing: their max comes from the min
            pooled = torch.where((scale >= 0).view(f, 1), pooled, v.amin(dim=1))
        y = torch.relu(pooled * scale.view(f, 1) + shift.view(f, 1))
        ctx.save_for_backward(v, weight, mean, rstd, pooled, y)
        return y

    @staticmethod
    def backward(ctx, gy):
        v, weight, mean, rstd, pooled, y = ctx.saved_tensors
        b, n, f, t = v.shape
        count = b * n * t
        gz = gy * (y > 0)
        g_shift = gz.sum(dim=(0, 2))
        g_scale = (gz * pooled).sum(dim=(0, 2))
        g_affine = g_scale - g_shift * mean  # d loss / d (weight * rstd), through scale and shift
        g_var = -0.5 * g_affine * weight * rstd**3
        g_mean = -g_shift * weight * rstd
        a = 2 * g_var / count
        c = g_mean / count - mean * a
        gv = torch.eq(v, pooled.unsqueeze(1), out=torch.empty_like(v))  # 1.0 at each cell holding the max
        gv.mul_((gz * (weight * rstd).view(f, 1)).unsqueeze(1) / gv.sum(dim=1, keepdim=True))
        gv.addcmul_(v, a.view(f, 1)).add_(c.view(f, 1))
        return gv, g_affine * rstd, g_shift, None, None


class GridPost(nn.Sequential):
    """Upstream's layers after the towers, BatchNorm3d -> ReLU -> MaxPool3d((time_pool, rows, cols))
    -> Dropout3d, on (batch, cells * filters, T) -> (batch, filters, T // time_pool, 1, 1). Only the
    batch norm has state, at index 0 as in upstream's `cnn_post.0.*` keys.

    A per-filter affine map with positive scale commutes with a max (negative scale: with a min), so
    the max over cells is taken first and the batch norm's affine map and the ReLU run on 1/cells of
    the values: the same outputs, with fewer passes over the big tensor forward and backward. Training
    mode uses the batch's statistics and updates the running ones as nn.BatchNorm3d does.
    """

    def __init__(self, width: int, n_cells: int, time_pool: int, dropout: float):
        super().__init__(GridBatchNorm3d(width), nn.Dropout3d(dropout))
        self.n_cells, self.time_pool = n_cells, time_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, dropout = self
        b, cf, t = x.shape
        v = x.view(b, self.n_cells, cf // self.n_cells, t)
        if bn.training:
            bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            pooled = _NormReluMax.apply(v, bn.weight, bn.bias, bn, momentum)
        else:
            scale, shift = batch_norm_affine(bn)
            pooled = torch.where((scale >= 0).view(-1, 1), v.amax(dim=1), v.amin(dim=1))
            pooled = torch.relu(pooled * scale.view(-1, 1) + shift.view(-1, 1))
        if self.time_pool > 1:
            pooled = F.max_pool1d(pooled, self.time_pool)
        return dropout(pooled.view(*pooled.shape, 1, 1))


def recurrent_steps(lengths: torch.Tensor, n_steps: int, pool: int, readout: str) -> int:
    """How many steps a recurrence must run for `last_step` to read every sequence of the batch.

    A GRU's output at a step depends on earlier steps only, so stopping after the batch's last read
    step changes nothing. Not while tracing (ONNX export): the graph must serve any lengths.
    """
    if readout != "last_real" or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return n_steps
    return min(n_steps, int((lengths.max() - 1) // max(pool, 1)) + 1)


class _MS3D(nn.Module):
    """Shared front of the MS3D models: channels on a grid, three 3D-conv towers of kernel 3/5/7."""

    def __init__(self, n_channels, filters, kernels, grid, time_pool, dropout, stacked_towers):
        super().__init__()
        rows, cols = grid or (4, -(-n_channels // 4))  # default: 4 rows (8 channels: upstream's 4 x 2)
        if n_channels > rows * cols:
            raise ValueError(f"{n_channels} channels do not fit a {rows} x {cols} grid")
        self.n_channels, self.grid, self.time_pool = n_channels, (rows, cols), time_pool
        for i, k in enumerate(kernels, start=1):
            layers = [
                GridConv3d(1, filters, k, (rows, cols)),
                GridBatchNorm3d(filters),
                nn.ReLU(inplace=True),
            ]
            if stacked_towers:
                layers += [
                    GridConv3d(filters, filters, 3, (rows, cols)),
                    GridBatchNorm3d(filters),
                    nn.ReLU(inplace=True),
                ]
            setattr(self, f"tower{i}", nn.Sequential(*layers))
        self.n_towers = len(kernels)
        width = filters * len(kernels)
        self.cnn_post = GridPost(width, rows * cols, time_pool, dropout)
        self.folded: FoldedFront | None = None  # set on an inference copy by `fold`

    def on_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, cells, T); channel c in cell (c // cols, c % cols), empty cells zero (the
        mean, in scaled units)."""
        b, t, c = x.shape
        n = self.grid[0] * self.grid[1]
        if c < n:
            x = torch.cat([x, x.new_zeros(b, t, n - c)], dim=2)
        return x.transpose(1, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T // time_pool, filters * towers)."""
        if self.folded is not None:
            return self.folded(self.on_grid(x))
        b, t, _ = x.shape
        n = self.grid[0] * self.grid[1]
        x = self.on_grid(x)
        towers = [getattr(self, f"tower{i}")(x) for i in range(1, self.n_towers + 1)]
        out = torch.cat([y.view(b, n, -1, t) for y in towers], dim=2).view(b, -1, t)  # cells, then filters
        return self.cnn_post(out).flatten(2).transpose(1, 2)


def batch_norm_affine(bn: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per feature that an eval-mode batch norm applies."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class FoldedGridConv(nn.Module):
    """A GridConv3d and the batch norm after it, in eval mode, as one dense convolution over time:
    every (cell, filter) from every (cell, channel), out-of-reach weights zero. More multiply-adds
    than the row blocks, but one operator: faster where per-operator cost dominates (one episode in
    ONNX Runtime). `filter_major` orders the outputs (filter, cell) instead of (cell, filter)."""

    def __init__(self, conv: GridConv3d, bn: nn.BatchNorm3d, filter_major: bool = False):
        super().__init__()
        w = conv.cell_weights()  # (out cells, filters, in cells, channels, k)
        n, f, _, c, k = w.shape
        scale, shift = batch_norm_affine(bn)
        w = w * scale.view(1, f, 1, 1, 1)
        bias = shift if conv.bias is None else conv.bias * scale + shift
        bias = bias.expand(n, f)
        if filter_major:
            w, bias = w.transpose(0, 1), bias.t()
        self.register_buffer("weight", w.reshape(n * f, n * c, k).contiguous())
        self.register_buffer("bias", bias.reshape(-1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight, self.bias, padding=self.weight.shape[2] // 2)


class FoldedFront(nn.Module):
    """An MS3D network's front (towers, batch norm, ReLU, max over cells, time pooling) rewritten
    exactly for inference: each tower's batch norms folded into its convolutions, and the batch norm
    and ReLU after the towers applied after the max over cells, on 1/cells of the values. That swap
    is exact: a per-filter affine map with positive scale is increasing, so it commutes with the
    max; a filter with negative scale takes the max of the negated values instead."""

    def __init__(self, net: _MS3D):
        super().__init__()
        self.n_cells = net.grid[0] * net.grid[1]
        self.time_pool = net.time_pool
        towers = []
        for i in range(1, net.n_towers + 1):
            layers = list(getattr(net, f"tower{i}"))  # (conv, batch norm, ReLU) once or twice
            folded = []
            for j in range(0, len(layers), 3):
                last = j + 3 == len(layers)
                folded += [FoldedGridConv(layers[j], layers[j + 1], filter_major=last), nn.ReLU()]
            towers.append(nn.Sequential(*folded))
        self.towers = nn.ModuleList(towers)
        scale, shift = batch_norm_affine(net.cnn_post[0])
        self.register_buffer("sign", torch.where(scale < 0, -1.0, 1.0).view(-1, 1, 1))
        self.flips = bool((scale < 0).any())
        self.register_buffer("scale", scale.abs().view(-1, 1))
        self.register_buffer("shift", shift.view(-1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cells, T) -> (B, T // time_pool, filters * towers)."""
        out = torch.cat([tower(x) for tower in self.towers], dim=1)  # (B, filters * cells, T)
        b, _, t = out.shape
        out = out.view(b, -1, self.n_cells, t)
        if self.flips:
            out = out * self.sign
        out = torch.relu(out.max(dim=2).values * self.scale + self.shift)
        if self.time_pool > 1:
            out = F.max_pool1d(out, self.time_pool)
        return out.transpose(1, 2)


@torch.no_grad()
def fold(net: nn.Module) -> nn.Module:
    """An eval-mode copy of `net` computing the same outputs with fewer operators (`FoldedFront` for
    the MS3D models; the recurrent ones are returned as copies). For inference and export only: the
    copy cannot be trained, and its state dict is not a checkpoint's."""
    folded = copy.deepcopy(net).eval()
    if isinstance(folded, _MS3D):
        folded.folded = FoldedFront(folded)
    return folded


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
        feats = self.features(x)
        seq, _ = self.gru(feats[:, : recurrent_steps(lengths, feats.shape[1], self.time_pool, self.readout)])
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
        feats = self.features(x)
        seq, _ = self.gru1(feats[:, : recurrent_steps(lengths, feats.shape[1], self.time_pool, self.readout)])
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


def last_linear(net: nn.Module) -> nn.Linear:
    """The classifier's output layer: what it reads is the network's embedding of an episode."""
    return [m for m in net.modules() if isinstance(m, nn.Linear)][-1]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def batched_logits(net: nn.Module, x: np.ndarray, lengths: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """The network's logits for arrays of episodes, `batch_size` episodes at a time (0: all at once)."""
    step = batch_size or len(x)
    return torch.cat(
        [
            net(torch.from_numpy(x[i : i + step]), torch.from_numpy(lengths[i : i + step]))
            for i in range(0, len(x), step)
        ]
    )
