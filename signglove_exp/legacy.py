"""Upstream KLP-SignGlove checkpoints and scaler, identified from their weights and imported.

    python -m signglove_exp.legacy data/legacy/*.ckpt --scaler data/legacy/scaler.pkl

Each checkpoint's architecture is told from its state-dict keys and shapes alone, rebuilt, wrapped
with the upstream scaler and upstream's way of running it (padding 1.0 in raw units, its readout
index), saved as a self-describing checkpoint and logged to MLflow as a run of its own, evaluated
on the reference test split.
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path

import numpy as np

from signglove_exp import BUNDLED_DIR, command, default_outputs
from signglove_exp.card import ModelCard

UPSTREAM_PADDING = {"value": 1.0, "units": "raw"}  # upstream padded raw episodes with 1.0, then scaled


def identify(state_dict: dict) -> dict:
    """Architecture name and hyper-parameters from weights alone (architectures.md's signatures)."""
    sd = {k.removeprefix("model."): v for k, v in state_dict.items()}
    keys = set(sd)

    def layers(prefix: str) -> int:
        return 1 + max(int(m.group(1)) for k in keys if (m := re.fullmatch(rf"{prefix}weight_ih_l(\d+)", k)))

    if "RNN.0.weight" in keys and "RNN.1.weight_ih_l0" in keys:
        proj, n_channels = sd["RNN.0.weight"].shape
        return {
            "name": "gru",
            "n_channels": n_channels,
            "n_classes": sd["output_layers.output_layers.3.weight"].shape[0],
            "hidden": sd["RNN.1.weight_hh_l0"].shape[1],
            "layers": layers(r"RNN\.1\."),
            "input_projection": proj,
        }
    if "RNN.weight_ih_l0" in keys:
        n = layers(r"RNN\.")
        common = {
            "n_channels": sd["RNN.weight_ih_l0"].shape[1],
            "hidden": sd["RNN.weight_hh_l0"].shape[1],
            "n_classes": sd["output_layers.output_layers.3.weight"].shape[0],
        }
        return (
            {"name": "gru", **common, "layers": 1}
            if n == 1
            else {"name": "stacked_gru", **common, "layers": n}
        )
    towers = sorted(int(m.group(1)) for k in keys if (m := re.fullmatch(r"tower(\d+)\.0\.weight", k)))
    if towers:
        conv = sd["tower1.0.weight"]
        common = {
            "n_channels": 8,
            "n_classes": sd["output_layers.3.weight"].shape[0],
            "filters": conv.shape[0],
            "kernels": [sd[f"tower{i}.0.weight"].shape[2] for i in towers],
        }
        if "tower1.3.weight" in keys and "gru1.weight_ih_l0" in keys and "gru2.weight_ih_l0" in keys:
            return {"name": "ms3d_stacked_gru", **common, "hidden": sd["gru2.weight_hh_l0"].shape[1]}
        if "gru.weight_ih_l0" in keys and "tower1.3.weight" not in keys:
            return {"name": "ms3d_gru", **common, "hidden": sd["gru.weight_hh_l0"].shape[1]}
    shown = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(sd.items())[:8])
    raise ValueError(f"weights match no known architecture signature; found {len(sd)} tensors: {shown}, ...")


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


def import_checkpoint(path: str | Path, scaler: dict, cfg):
    """Rebuild an upstream checkpoint as this project's model and card, run the way upstream ran it."""
    from omegaconf import OmegaConf

    from signglove_exp.card import load_checkpoint_file

    ckpt = load_checkpoint_file(path)
    state_dict = {k.removeprefix("model."): v for k, v in ckpt.get("state_dict", ckpt).items()}
    hparams = identify(state_dict)
    if hparams["name"] in ("gru", "stacked_gru") and hparams["n_channels"] != len(scaler["channels"]):
        raise ValueError(
            f"{path}: {hparams['n_channels']} input channels, the scaler has {len(scaler['channels'])}"
        )
    hparams["n_channels"] = len(scaler["channels"])
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    card = ModelCard(
        model={**hparams, "readout": "upstream"},
        classes=list(cfg.data.classes),
        channels=list(scaler["channels"]),
        seq_len=87,
        padding=dict(UPSTREAM_PADDING),
        scaler=scaler,
        config={
            "data": {**data_cfg, "padding": dict(UPSTREAM_PADDING)},
            "split": OmegaConf.to_container(cfg.split, resolve=True),
        },
        lineage={
            "source": f"upstream KLP-SignGlove {Path(path).name}",
            "adapted": "imported",
            "epoch": ckpt.get("epoch"),
        },
    )
    return card.build_net(state_dict), card


def main(argv: list[str] | None = None) -> list[dict]:
    default_dir = BUNDLED_DIR / "legacy"
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.legacy", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="*", type=Path, help=f"default: every .ckpt in {default_dir}")
    ap.add_argument("--scaler", type=Path, default=default_dir / "scaler.pkl", help="upstream's scaler.pkl")
    ap.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db")
    ap.add_argument("--experiment", default="signglove-legacy", help="MLflow experiment for the imports")
    ap.add_argument("--out", type=Path, help="converted checkpoints (default: outputs/legacy)")
    args = ap.parse_args(argv)

    import torch

    from signglove_exp.card import CARD_KEY
    from signglove_exp.inference.evaluation import episodes_to_evaluate, evaluate
    from signglove_exp.inference.recognizer import Recognizer
    from signglove_exp.models import count_parameters
    from signglove_exp.tracking.runs import log_evaluation
    from signglove_exp.training.cli import compose

    cfg = compose()
    scaler = read_scaler_pickle(args.scaler, list(cfg.data.channels))
    results = []
    for path in args.checkpoints or sorted(default_dir.glob("*.ckpt")):
        net, card = import_checkpoint(path, scaler, cfg)
        out = (args.out or default_outputs() / "legacy") / path.stem
        out.mkdir(parents=True, exist_ok=True)
        converted = out / f"{card.name}-{path.stem}.ckpt"
        torch.save({"state_dict": net.state_dict(), CARD_KEY: card.to_dict()}, converted)
        rec = Recognizer.from_torch(net, card)
        corpus, idx, described = episodes_to_evaluate(rec, None)
        metrics, files = evaluate(rec, corpus, idx, out)
        params = {
            "legacy.file": path.name,
            "padding": "1.0 raw",
            "data": described,
            **{f"model.{k}": v for k, v in card.model.items()},
        }
        run_id = log_evaluation(
            args.tracking_uri,
            args.experiment,
            None,
            f"legacy-{card.name}",
            params,
            metrics,
            [*files, converted],
            kind="legacy-import",
        )
        print(
            f"{path.name}: {card.name} ({count_parameters(net):,} parameters), "
            f"test acc {metrics['eval/acc']:.4f} on {len(idx)} episodes; run {run_id}, checkpoint {converted}"
        )
        results.append({"file": path.name, "model": card.name, "run_id": run_id, **metrics})
    return results


if __name__ == "__main__":
    command(main)
