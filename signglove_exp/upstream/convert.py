"""Upstream checkpoints rebuilt as this project's models, run the way upstream ran them (padding 1.0 in
raw units, its readout index), saved as self-describing checkpoints and logged as evaluation runs."""

from __future__ import annotations

from pathlib import Path

from signglove_exp.card import ModelCard
from signglove_exp.upstream.identify import identify

UPSTREAM_PADDING = {"value": 1.0, "units": "raw"}  # upstream padded raw episodes with 1.0, then scaled


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


def import_all(
    checkpoints: list[Path], scaler: dict, cfg, out_root: Path, uri: str | None, experiment: str
) -> list[dict]:
    """Each checkpoint converted into out_root/<stem>/, evaluated on its reference test split and logged
    as a run of `experiment`; one summary dict per checkpoint."""
    import torch

    from signglove_exp.card import CARD_KEY
    from signglove_exp.inference.evaluation import episodes_to_evaluate, evaluate
    from signglove_exp.inference.recognizer import Recognizer
    from signglove_exp.models import count_parameters
    from signglove_exp.tracking.runs import log_evaluation

    results = []
    for path in checkpoints:
        net, card = import_checkpoint(path, scaler, cfg)
        out = out_root / path.stem
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
        name, files = f"legacy-{card.name}", [*files, converted]
        run_id = log_evaluation(uri, experiment, None, name, params, metrics, files, "legacy-import")
        results.append(
            {
                "file": path.name,
                "model": card.name,
                "run_id": run_id,
                "n_params": count_parameters(net),
                "n_episodes": len(idx),
                "checkpoint": converted,
                **metrics,
            }
        )
    return results
