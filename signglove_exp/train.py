"""One experiment: data -> model -> Lightning fit -> test on the best checkpoint -> MLflow run.

`train(cfg)` is plain (tests call it directly); `main` is the Hydra entry point around it and `cli`
the command, which also ends a stopped or broken multirun's MLflow runs.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from signglove_exp import PROJECT_DIR, data, plots, tracking
from signglove_exp.models import build_model, count_parameters
from signglove_exp.module import Classifier, latency_ms

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
        "padding": OmegaConf.to_container(cfg.data.padding, resolve=True),
        "scaler": prepared.scaler,
        "data_fingerprint": prepared.corpus.fingerprint,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "version": project_version(),
    }


def train(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """Train and test one configuration; returns (metrics, objects) and leaves a finished MLflow run."""
    pl.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    prepared = data.prepare(cfg.data, cfg.split)
    classes, channels = prepared.corpus.classes, prepared.corpus.channels
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    net = build_model(**model_cfg, n_channels=len(channels), n_classes=len(classes))
    module = Classifier(
        net,
        instantiate(cfg.optimizer),
        instantiate(cfg.scheduler) if cfg.scheduler else None,
        checkpoint_meta(cfg, prepared, len(channels), len(classes)),
    )
    logger = tracking.make_logger(cfg, {"data.fingerprint": prepared.corpus.fingerprint})
    try:
        metrics, best = fit_and_test(cfg, prepared, module, logger, out_dir)
    except BaseException as error:
        tracking.mark_stopped(logger, error)
        raise
    print(
        f"{cfg.model.name}: test acc {metrics['test/acc']:.4f}, macro F1 {metrics['test/f1_macro']:.4f} "
        f"(best epoch {metrics['best_epoch']}); MLflow run {logger.run_id} at {tracking.tracking_uri(cfg)}"
    )
    return metrics, {"prepared": prepared, "module": module, "run_id": logger.run_id, "best_checkpoint": best}


def fit_and_test(cfg: DictConfig, prepared: data.Prepared, module: Classifier, logger, out_dir: Path):
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    tracking.log_params(logger, cfg, overrides)
    n_params = count_parameters(module.net)
    sizes = {f"data/n_{p}": len(i) for p, i in prepared.parts.items()}
    logger.log_metrics(
        {"model/n_params": n_params, **sizes, "data/n_rejected": len(prepared.corpus.rejected)}
    )
    reports = data.write_reports(prepared, out_dir)
    if prepared.corpus.rejected:
        n_bad = len(prepared.corpus.rejected)
        print(f"Skipped {n_bad} unusable episode file(s); reasons in {out_dir / 'bad_files.tsv'}")

    loaders = {
        part: loader(prepared.arrays[part], batch, part == "train", cfg.seed)
        for part, batch in [
            ("train", cfg.data.batch_size),
            ("val", cfg.data.eval_batch_size),
            ("test", cfg.data.eval_batch_size),
        ]
    }
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=logger, default_root_dir=str(out_dir)
    )
    started = time.time()
    trainer.fit(module, loaders["train"], loaders["val"])
    train_s = time.time() - started
    best = trainer.checkpoint_callback.best_model_path
    trainer.test(module, loaders["test"], ckpt_path=best or None, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    x_test, len_test, _ = (torch.from_numpy(a) for a in prepared.arrays["test"])
    metrics.update(
        {
            "best_epoch": torch.load(best, map_location="cpu", weights_only=True)["epoch"]
            if best
            else trainer.current_epoch,
            "model/n_params": n_params,
            "time/train_s": train_s,
            "time/epoch_s": train_s / max(trainer.current_epoch, 1),
            "time/latency_ms": latency_ms(module.net.cpu(), x_test, len_test),
        }
    )
    logger.log_metrics({k: v for k, v in metrics.items() if not k.startswith("test/")})

    config_file = out_dir / "config.yaml"
    config_file.write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    title = f"{cfg.model.name} seed {cfg.seed}: test acc {metrics['test/acc']:.4f}"
    confusion = plots.write_confusion(module.test_confusion, prepared.corpus.classes, out_dir, title)
    tracking.log_files(logger, [*reports, config_file, *confusion])
    if best:
        tracking.log_files(logger, [Path(best)], "checkpoints")
        if cfg.tracking.log_model:
            example = prepared.corpus.root / prepared.corpus.episodes[prepared.parts["test"][0]].path
            tracking.log_pyfunc(cfg, logger.run_id, Path(best), example, prepared.corpus.channels)
    return metrics, best


def compose(*overrides: str) -> DictConfig:
    """The config the CLI would compose, for code and tests that run without `@hydra.main`."""
    with hydra.initialize_config_dir(str(PROJECT_DIR / "conf"), version_base="1.3"):
        return hydra.compose("config", overrides=list(overrides))


@hydra.main(version_base="1.3", config_path=str(PROJECT_DIR / "conf"), config_name="config")
def main(cfg: DictConfig) -> float:
    metrics, _ = train(cfg)
    return metrics["test/acc"]


def cli() -> None:
    """`main` as a command: a multirun stopped with Ctrl-C or broken by an error ends its MLflow runs
    (KILLED or FAILED) and reports what finished, instead of leaving them RUNNING."""
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    # A process started with SIGINT ignored (`nohup ... &`) keeps ignoring it.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        main()
    except BaseException:
        if interrupted:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        tracking.close_open_sweep("KILLED" if interrupted else "FAILED")
        if interrupted:
            print("Stopped by Ctrl-C.", file=sys.stderr)
            raise SystemExit(130) from None
        raise
