"""Where a run starts, decided in this one place: from scratch, resuming itself, or from a model.

- A run folder that already names an MLflow run (`run.json`) is that run again: a FINISHED run is
  skipped, any other continues from its `checkpoints/last.ckpt` (or from the start, in the same
  MLflow run, when it was stopped before its first epoch ended) with the config it was started with.
  This is what `resume=`, a resumed multirun and a requeued cluster job all come down to.
- `init_from=` a checkpoint file, an MLflow run id or a `runs:/` / `models:/` URI: architecture,
  weights, sequence length and padding come from the source's model card, and its scaler unless
  `finetune.refit_scaler`; the config's classes and channels must be the source's.
- Otherwise: a fresh network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from signglove_exp.card import ModelCard, read_checkpoint
from signglove_exp.tracking.records import read_run_record, recorded_store
from signglove_exp.tracking.runs import flatten
from signglove_exp.tracking.store import tracking_uri
from signglove_exp.training.targets import check_config

# config keys a fine-tune takes from its source
ADOPTED = ("model.", "data.seq_len", "data.padding.", "data.transforms.", "data.normalize")


@dataclass
class Start:
    kind: str  # scratch | pretrained | resume | finished
    cfg: DictConfig  # the config to run: a resumed run's own, a fine-tune's with the source's model
    run_id: str | None = None  # the MLflow run to continue (resume, finished)
    checkpoint: Path | None = None  # last.ckpt to resume from
    card: ModelCard | None = None  # the card of the source model (pretrained) or of last.ckpt (resume)
    weights: dict | None = None  # the source model's weights (pretrained)
    lineage: dict = field(default_factory=dict)


def starting_point(cfg: DictConfig) -> Start:
    out_dir = Path(cfg.paths.output_dir)
    record = read_run_record(out_dir)
    if record is None:
        return _fresh(cfg)
    from mlflow.tracking import MlflowClient

    store = recorded_store(record, tracking_uri(cfg))
    run = MlflowClient(store).get_run(record["run_id"])
    saved = relocated(OmegaConf.load(out_dir / "config.yaml"), out_dir)
    check_config(OmegaConf.to_container(saved), str(out_dir / "config.yaml"))
    saved.tracking.uri = store  # the saved config names it without credentials
    changed = config_changes(saved, cfg)
    if changed:
        raise ValueError(
            f"paths.output_dir {out_dir} holds run {record['run_id']}, started with other values of "
            f"{', '.join(changed[:8])}: a run continues with the values it was started with, so leave "
            f"those out (resume={out_dir} alone continues it), or give this run a folder of its own"
        )
    if run.info.status == "FINISHED":
        return Start("finished", saved, run.info.run_id)
    last = out_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():  # stopped before its first epoch ended: start again, in the same run
        again = _fresh(saved)
        again.run_id = run.info.run_id
        return again
    card = read_checkpoint(last)[0]
    return Start("resume", saved, run.info.run_id, last, card, lineage=card.lineage)


def relocated(saved: DictConfig, out_dir: Path) -> DictConfig:
    """A run's saved config with its folder where the folder is now: a moved run folder resumes in
    place (its checkpoints and files go there, not to where it was first)."""
    before = str(saved.paths.output_dir)
    return OmegaConf.create(moved_paths(OmegaConf.to_container(saved), before, str(out_dir)))


def moved_paths(value, before: str, now: str):
    """`value` (nested dicts and lists) with every path under the folder `before` under `now` instead."""
    if isinstance(value, dict):
        return {moved_paths(k, before, now): moved_paths(v, before, now) for k, v in value.items()}
    if isinstance(value, list):
        return [moved_paths(v, before, now) for v in value]
    if isinstance(value, str) and (value == before or value.startswith(before + os.sep)):
        return now + value[len(before) :]
    return value


def config_changes(saved: DictConfig, cfg: DictConfig) -> list[str]:
    """The dotted keys whose resolved values differ between a run's saved config and `cfg`, aside from
    the run name (it holds the time it started), the store (saved without credentials; the run's
    record says which store), the CPU threads (a property of the machine) and, for a fine-tune, what
    came from its source."""
    a, b = (flatten(OmegaConf.to_container(c, resolve=True)) for c in (saved, cfg))
    aside = ("tracking.run_name", "tracking.uri", "threads", *(ADOPTED if saved.get("init_from") else ()))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and not k.startswith(aside))


def _fresh(cfg: DictConfig) -> Start:
    if not cfg.get("init_from"):
        return Start("scratch", cfg)
    path, source_run = source_checkpoint(cfg)
    card, weights, _ = read_checkpoint(path)
    card.check_fits(cfg.data.classes, cfg.data.channels, f"init_from={cfg.init_from}")
    adopted = {
        "model": {k: v for k, v in card.model.items() if k not in ("n_channels", "n_classes")},
        "data.seq_len": card.seq_len,
        "data.padding": dict(card.padding),
        "data.transforms": card.preprocess.get("transforms", {}),
        "data.normalize": card.preprocess.get("normalize", "global"),
    }
    for key, value in flatten(adopted).items():
        if "${" in value:  # OmegaConf would resolve it: ${oc.env:...} copies the environment into the run
            raise ValueError(
                f"init_from={cfg.init_from}: the model card's {key} holds an interpolation ({value[:80]}); "
                "values read from a checkpoint are data, and this one is refused"
            )
    cfg = cfg.copy()
    with open_dict(cfg):  # what ADOPTED names
        cfg.model = adopted["model"]
        cfg.data.seq_len, cfg.data.padding = adopted["data.seq_len"], adopted["data.padding"]
        cfg.data.transforms, cfg.data.normalize = adopted["data.transforms"], adopted["data.normalize"]
    lineage = {
        "source": str(cfg.init_from),
        "source_run": source_run,
        "source_checkpoint": path.name,
        "source_lineage": card.lineage or None,
        "adapted": f"fine-tuned, finetune.train={OmegaConf.to_container(cfg.finetune)['train']}",
        "scaler": "refit on this data's train part" if cfg.finetune.refit_scaler else "the source's",
    }
    return Start("pretrained", cfg, card=card, weights=weights, lineage=lineage)


def source_checkpoint(cfg: DictConfig) -> tuple[Path, str | None]:
    """The checkpoint `init_from` names, fetched from MLflow when needed, and its run id if known."""
    from signglove_exp.tracking.queries import download_checkpoint

    source = str(cfg.init_from)
    if Path(source).is_file():
        return Path(source), None
    if Path(source).suffix in (".ckpt", ".onnx") or "/" in source and ":/" not in source:
        raise FileNotFoundError(f"init_from={source}: no such checkpoint file")
    uri = tracking_uri(cfg)
    try:
        path = download_checkpoint(
            source, uri, Path(cfg.paths.outputs) / "models" / source.replace(":/", "_")
        )
    except Exception as e:  # MLflow's errors for an unknown run or model are long; say it in one line
        raise ValueError(
            f"init_from={source}: not a file, and no such MLflow run or model at {uri} "
            f"({str(e).splitlines()[0][:200]})"
        ) from e
    run_id = source.split("/")[1] if source.startswith("runs:/") else None if ":/" in source else source
    return path, run_id
