"""Signer-robust preprocessing: channel transforms (a registry) and the normalisation scopes.

Both are train-time choices that travel in the model card (`preprocess`) and are applied by
`model_inputs` identically in training, evaluation, recognition and the pyfunc model (ONNX graphs
take their output). A transform maps one raw episode (n_timepoints, n_channels) and its feature
names to new ones; `data.transforms` maps each registered name to the channels it applies to, run in
that order; to add one, decorate a function here and name it in config. A normalisation scope says
whose statistics scale an episode (`preprocess.episode_scalers`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from signglove_exp import registrar

Transform = Callable[[np.ndarray, list[str], list[str]], tuple[np.ndarray, list[str]]]
TRANSFORMS: dict[str, Transform] = {}
transform = registrar(TRANSFORMS)
SCOPES = ("global", "per_signer", "per_episode")  # normalisation: train statistics, the signer's, its own


def _columns(names: list[str], wanted: list[str], key: str) -> list[int]:
    missing = [c for c in wanted if c not in names]
    if missing:
        raise ValueError(
            f"data.transforms.{key}: {', '.join(missing)} not among the features {', '.join(names)}"
        )
    return [names.index(c) for c in wanted]


def _wrap(degrees: np.ndarray) -> np.ndarray:
    return (degrees + 180.0) % 360.0 - 180.0


@transform("relative")
def relative(values: np.ndarray, names: list[str], channels: list[str]) -> tuple[np.ndarray, list[str]]:
    """Angles relative to the episode's first sample, wrapped to [-180, 180): a heading (yaw) says
    where the signer faced, not what the hand did."""
    out = values.copy()
    for j in _columns(names, channels, "relative"):
        out[:, j] = _wrap(values[:, j] - values[0, j])
    return out, names


@transform("sincos")
def sincos(values: np.ndarray, names: list[str], channels: list[str]) -> tuple[np.ndarray, list[str]]:
    """Each angle (degrees) becomes its sine and cosine, so -179 and 179 are neighbours, not opposites."""
    cols = _columns(names, channels, "sincos")
    keep = [j for j in range(len(names)) if j not in cols]
    rad = np.deg2rad(values[:, cols])
    out = np.concatenate([values[:, keep], np.sin(rad), np.cos(rad)], axis=1)
    return out, [names[j] for j in keep] + [f"sin_{c}" for c in channels] + [f"cos_{c}" for c in channels]


@transform("derivative")
def derivative(values: np.ndarray, names: list[str], channels: list[str]) -> tuple[np.ndarray, list[str]]:
    """Appends each channel's change since the previous sample (0 at the first), as d_<channel>."""
    cols = _columns(names, channels, "derivative")
    diff = np.diff(values[:, cols], axis=0, prepend=values[:1, cols])
    return np.concatenate([values, diff], axis=1), names + [f"d_{c}" for c in channels]


def check_preprocess(preprocess: dict) -> None:
    """Unknown transforms or scopes are one-line errors naming the config key."""
    unknown = [t for t in preprocess.get("transforms", {}) if t not in TRANSFORMS]
    if unknown:
        raise ValueError(f"data.transforms: unknown {', '.join(unknown)}; known: {', '.join(TRANSFORMS)}")
    if preprocess.get("normalize", "global") not in SCOPES:
        raise ValueError(f"data.normalize={preprocess['normalize']!r}: must be one of {', '.join(SCOPES)}")


def apply_transforms(
    episodes: list[np.ndarray], channels: list[str], transforms: dict
) -> tuple[list[np.ndarray], list[str]]:
    """Raw episodes in `channels` order -> feature arrays and their names (the model's input columns)."""
    names = list(channels)
    out = [np.asarray(v, dtype=np.float64) for v in episodes]
    for name, wanted in transforms.items():
        if not wanted:
            continue
        done = [TRANSFORMS[name](v, names, list(wanted)) for v in out]
        names = done[0][1] if done else TRANSFORMS[name](np.zeros((1, len(names))), names, list(wanted))[1]
        out = [v for v, _ in done]
    return out, names
