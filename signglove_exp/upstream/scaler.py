"""Upstream's scaler.pkl read as data: a restricted unpickler that admits only a StandardScaler's parts."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


class _ScalerState:
    """Stands in for sklearn's StandardScaler while unpickling, so none of its code runs."""

    def __setstate__(self, state: dict) -> None:
        self.state = state


_ALLOWED = {
    ("sklearn.preprocessing._data", "StandardScaler"): _ScalerState,
    **{
        (mod, "_reconstruct"): np._core.multiarray._reconstruct
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
    },
    **{
        (mod, "scalar"): np._core.multiarray.scalar
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
    },
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a StandardScaler")
        return _ALLOWED[(module, name)]


def read_scaler_pickle(path: str | Path, channels: list[str]) -> dict:
    """mean_ and scale_ of a pickled StandardScaler, without executing anything else in the file."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a plain pickled StandardScaler ({e})") from e
    state = getattr(obj, "state", None)
    if not isinstance(state, dict) or "mean_" not in state or "scale_" not in state:
        raise ValueError(f"{path}: the pickle holds no StandardScaler with mean_ and scale_")
    mean, scale = np.asarray(state["mean_"], dtype=float), np.asarray(state["scale_"], dtype=float)
    if mean.shape != (len(channels),) or scale.shape != mean.shape or not np.all(np.isfinite(mean * scale)):
        raise ValueError(
            f"{path}: mean_/scale_ of shape {mean.shape}/{scale.shape}, expected ({len(channels)},)"
        )
    return {
        "channels": list(channels),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "n_samples_seen": int(state.get("n_samples_seen_", 0)),
    }
