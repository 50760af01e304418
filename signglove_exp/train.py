"""One experiment: data -> model -> Lightning fit -> test on the best checkpoint -> MLflow run.

`train(cfg)` is plain (tests call it directly); `main` is the Hydra entry point around it.
"""

from __future__ import annotations

import csv
import logging
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from signglove_exp import data, plots, tracking
from signglove_exp.models import build_model, count_parameters
from signglove_exp.module import Classifier

PROJECT_DIR = Path(__file__).resolve().parents[1]
OmegaConf.register_new_resolver("project_dir", lambda: str(PROJECT_DIR), replace=True)
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda r: "Tip:" not in r.getMessage())
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning 2.6 on torch 2.13, not ours to fix


def project_version() -> str:
    try:
        return version("signglove-exp")
    except PackageNotFoundError:
        return "unknown"


def loader(arrays, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    x, lengths, y = (torch.from_numpy(a) for a in arrays)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        TensorDataset(x, lengths, y), batch_size=batch_size or len(y), shuffle=shuffle, generator=generator
    )


def checkpoint_meta(cfg: DictConfig, prepared: data.Prepared, n_channels: int, n_classes: int) -> dict:
    """What a checkpoint must carry to be used without this run: all plain data."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    return {
        "model": {**model, "n_channels": n_channels, "n_classes": n_classes},
        "classes": prepared.corpus.classes,
        "channels": prepared.corpus.channels,
        "seq_len": prepared.seq_len,
        "pad_value": float(cfg.data.pad_value),
        "scaler": prepared.scaler,
        "data_fingerprint": prepared.corpus.fingerprint,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "version": project_version(),
    }


def write_confusion(cm: np.ndarray, classes: list[str], out_dir: Path, title: str) -> list[Path]:
    csv_path = out_dir / "confusion_matrix.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["true \\ predicted", *classes])
        w.writerows([c, *row] for c, row in zip(classes, cm.tolist(), strict=True))
    return [csv_path, plots.confusion_matrix_figure(cm, classes, out_dir / "confusion_matrix.png", title)]


def train(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """Train and test one configuration; returns (metrics, objects) and leaves a finished MLflow run."""
    pl.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    prepared = data.prepare(cfg.data, cfg.split)
    classes, channels = prepared.corpus.classes, prepared.corpus.channels
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    net = build_model(**model_cfg, n_channels=len(channels), n_classes=len(classes))
    n_params = count_parameters(net)
    module = Classifier(
        net,
        instantiate(cfg.optimizer),
        instantiate(cfg.scheduler) if cfg.scheduler else None,
        checkpoint_meta(cfg, prepared, len(channels), len(classes)),
    )
    train_dl = loader(prepared.arrays["train"], cfg.data.batch_size, True, cfg.seed)
    val_dl = loader(prepared.arrays["val"], cfg.data.eval_batch_size, False, cfg.seed)
    test_dl = loader(prepared.arrays["test"], cfg.data.eval_batch_size, False, cfg.seed)

    logger = tracking.make_logger(cfg, {"data.fingerprint": prepared.corpus.fingerprint})
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    tracking.log_params(logger, cfg, overrides)
    logger.log_metrics(
        {
            "model/n_params": n_params,
            **{f"data/n_{p}": len(i) for p, i in prepared.parts.items()},
            "data/n_rejected": len(prepared.corpus.rejected),
        }
    )
    reports = data.write_reports(prepared, out_dir)
    n_bad = len(prepared.corpus.rejected)
    if n_bad:
        print(f"Skipped {n_bad} unusable episode file(s); reasons in {out_dir / 'bad_files.tsv'}")

    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=logger, default_root_dir=str(out_dir)
    )
    started = time.time()
    trainer.fit(module, train_dl, val_dl)
    train_s = time.time() - started
    best = trainer.checkpoint_callback.best_model_path
    trainer.test(module, test_dl, ckpt_path=best or None, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    best_epoch = (
        int(torch.load(best, map_location="cpu", weights_only=True)["epoch"])
        if best
        else trainer.current_epoch
    )
    logger.log_metrics(
        {
            "best_epoch": best_epoch,
            "time/train_s": train_s,
            "time/epoch_s": train_s / max(trainer.current_epoch, 1),
        }
    )

    config_file = out_dir / "config.yaml"
    config_file.write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    title = f"{cfg.model.name} seed {cfg.seed}: test acc {metrics['test/acc']:.4f}"
    files = [*reports, config_file, *write_confusion(module.test_confusion, classes, out_dir, title)]
    tracking.log_files(logger, files)
    if best:
        tracking.log_files(logger, [Path(best)], "checkpoints")
    print(
        f"{cfg.model.name}: test acc {metrics['test/acc']:.4f}, macro F1 {metrics['test/f1_macro']:.4f} "
        f"(best epoch {best_epoch}); MLflow run {logger.run_id} at {tracking.tracking_uri(cfg)}"
    )
    metrics.update({"best_epoch": best_epoch, "time/train_s": train_s, "model/n_params": n_params})
    return metrics, {
        "prepared": prepared,
        "module": module,
        "run_id": logger.run_id,
        "best_checkpoint": best,
        "output_dir": out_dir,
    }


@hydra.main(version_base="1.3", config_path=str(PROJECT_DIR / "conf"), config_name="config")
def main(cfg: DictConfig) -> float:
    metrics, _ = train(cfg)
    return metrics["test/acc"]
