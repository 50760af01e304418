"""Augmentation of training batches, a registry: each simulates a way one signer's glove differs from
another's, and `augment.<name>` is its strength (0 = off).

Applied in `Classifier.training_step` only, never to validation, test or inference, on the scaled
(batch, n_timepoints, n_features) tensors. Each batch draws from a generator seeded by (seed, epoch,
batch), so a run is reproducible and a resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from signglove_exp import registrar

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x, lengths, targets (class probabilities)
Augmentation = Callable[[Batch, float, torch.Generator, "Augmenter"], Batch]
AUGMENTATIONS: dict[str, Augmentation] = {}
augmentation = registrar(AUGMENTATIONS)


def _normal(shape, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen)


@augmentation("jitter")
def jitter(batch: Batch, s: float, gen: torch.Generator, aug: Augmenter) -> Batch:
    """Sensor noise: Gaussian, std `s` (scaled units), on every sample."""
    x, lengths, y = batch
    return x + s * _normal(x.shape, gen), lengths, y


@augmentation("scale")
def scale(batch: Batch, s: float, gen: torch.Generator, aug: Augmenter) -> Batch:
    """A stronger or weaker signer: every feature of an episode times one factor 1 + N(0, s)."""
    x, lengths, y = batch
    return x * (1 + s * _normal((len(x), 1, 1), gen)), lengths, y


@augmentation("gain")
def gain(batch: Batch, s: float, gen: torch.Generator, aug: Augmenter) -> Batch:
    """Sensor gain and hand size: each feature of an episode times its own 1 + N(0, s)."""
    x, lengths, y = batch
    return x * (1 + s * _normal((len(x), 1, x.shape[2]), gen)), lengths, y


@augmentation("offset")
def offset(batch: Batch, s: float, gen: torch.Generator, aug: Augmenter) -> Batch:
    """Sensor offset: each feature of an episode shifted by N(0, s) standard deviations."""
    x, lengths, y = batch
    return x + s * _normal((len(x), 1, x.shape[2]), gen), lengths, y


@augmentation("rotate")
def rotate(batch: Batch, s: float, gen: torch.Generator, aug: Augmenter) -> Batch:
    """A hand held or a body turned a little differently: pitch, roll and yaw shifted by N(0, s)
    degrees per episode (in scaled units through each angle's scale; other features untouched)."""
    x, lengths, y = batch
    per_degree = aug.per_degree
    if not per_degree.any():
        return batch
    return x + s * _normal((len(x), 1, x.shape[2]), gen) * per_degree, lengths, y


@augmentation("drift")
def drift(batch: Batch, s: float, gen: torch.Generator, aug: Augmenter) -> Batch:
    """An IMU that drifts: pitch, roll and yaw each move linearly over the episode, by N(0, s) degrees
    from its first sample to its last."""
    x, lengths, y = batch
    if not aug.per_degree.any():
        return batch
    ramp = torch.arange(x.shape[1]).unsqueeze(0) / (lengths - 1).clamp(min=1).unsqueeze(1)
    total = s * _normal((len(x), 1, x.shape[2]), gen) * aug.per_degree
    return x + ramp.clamp(max=1).unsqueeze(2) * total, lengths, y


@augmentation("sensor_fault")
def sensor_fault(batch: Batch, s: float, gen: torch.Generator, aug: Augmenter) -> Batch:
    """A flex sensor that fails: with probability `s` an episode has one flex sensor reading a single
    value throughout, drawn from N(0, 3) in scaled units: stuck mid-range, saturated far above, or
    dropped far below its range."""
    x, lengths, y = batch
    flex = aug.flex.nonzero().flatten()
    if not len(flex):
        return batch
    failing = torch.rand(len(x), generator=gen) < s
    which = flex[torch.randint(len(flex), (len(x),), generator=gen)]
    reading = 3 * _normal((len(x),), gen)
    mask = failing.view(-1, 1) & (torch.arange(x.shape[2]) == which.view(-1, 1))
    return torch.where(mask.unsqueeze(1), reading.view(-1, 1, 1), x), lengths, y


@augmentation("time_warp")
def time_warp(batch: Batch, s: float, gen: torch.Generator, aug: Augmenter) -> Batch:
    """Signing faster or slower: each episode's real part resampled (linear) to its length times a
    factor in [1 - s, 1 + s], cut at the sequence length."""
    x, lengths, y = batch
    n_cases, n_timepoints, _ = x.shape
    factor = 1 + s * (2 * torch.rand(n_cases, generator=gen) - 1)
    new_lengths = (lengths * factor).round().long().clamp(2, n_timepoints)
    t = torch.arange(n_timepoints).expand(n_cases, -1)
    src = t * ((lengths - 1) / (new_lengths - 1).clamp(min=1)).unsqueeze(1)  # position in the old episode
    lo = src.floor().long().clamp(max=n_timepoints - 1)
    hi = (lo + 1).clamp(max=(lengths - 1).unsqueeze(1).expand(-1, n_timepoints))
    w = (src - lo).unsqueeze(2)
    warped = torch.lerp(x.gather(1, _rows(lo, x)), x.gather(1, _rows(hi, x)), w)
    return warped, new_lengths, y


def _rows(index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return index.unsqueeze(2).expand(-1, -1, x.shape[2])


@augmentation("mixup")
def mixup(batch: Batch, s: float, gen: torch.Generator, aug: Augmenter) -> Batch:
    """Mixup: episodes and their labels mixed in pairs with weights from Beta(s, s)."""
    x, lengths, y = batch
    lam = _beta(s, len(x), gen)
    other = torch.randperm(len(x), generator=gen)
    w = lam.view(-1, 1, 1)
    return (
        w * x + (1 - w) * x[other],
        torch.maximum(lengths, lengths[other]),
        lam.view(-1, 1) * y + (1 - lam.view(-1, 1)) * y[other],
    )


def _beta(a: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """Beta(a, a) draws from the batch's generator (torch.distributions has no generator argument)."""
    g1, g2 = (torch._standard_gamma(torch.full((n,), float(a)), generator=gen) for _ in range(2))
    return g1 / (g1 + g2)


class Augmenter:
    """The augmentations with a strength > 0, in registry order. `features` and `scaler` say which
    features are angles and how many scaled units a degree is, and where padding lies."""

    ANGLES = ("pitch", "roll", "yaw")

    def __init__(self, strengths: dict, seed: int, features: list[str], scaler: dict, padding: dict):
        unknown = [k for k in strengths if k not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"augment: unknown {', '.join(unknown)}; known: {', '.join(AUGMENTATIONS)}")
        bad = [
            k for k, v in strengths.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0
        ]
        if bad:
            raise ValueError(f"augment.{bad[0]}={strengths[bad[0]]!r}: must be a number >= 0 (0 = off)")
        self.steps = [(k, float(strengths[k])) for k in AUGMENTATIONS if strengths.get(k, 0) > 0]
        self.seed = seed
        mean, std = torch.tensor(scaler["mean"]), torch.tensor(scaler["scale"])
        fill = torch.full_like(mean, float(padding["value"]))
        self.padding = ((fill - mean) / std if padding["units"] == "raw" else fill).float()  # scaled units
        self.flex = torch.tensor([f.startswith("flex") for f in features])
        self.per_degree = torch.tensor(
            [1.0 / s if f in self.ANGLES else 0.0 for f, s in zip(features, scaler["scale"], strict=True)],
            dtype=torch.float32,
        )

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __call__(self, x, lengths, y, n_classes: int, epoch: int, batch_idx: int) -> Batch:
        """The batch augmented, with one-hot (or mixed) targets; steps past each length stay padding."""
        gen = torch.Generator().manual_seed(hash((self.seed, epoch, batch_idx)) & 0x7FFF_FFFF_FFFF)
        batch = (x, lengths, nn.functional.one_hot(y, n_classes).float())
        for name, strength in self.steps:
            batch = AUGMENTATIONS[name](batch, strength, gen, self)
        x, lengths, y = batch
        real = (torch.arange(x.shape[1]) < lengths.unsqueeze(1)).unsqueeze(2)
        return torch.where(real, x, self.padding), lengths, y
