"""One experiment: data -> model -> Lightning fit -> test on the best checkpoint -> MLflow run.

`train(cfg)` is plain (tests and notebooks call it) and starts where `starting_point` says (scratch,
resume, or a source model); the command around it, the only place that reads Hydra, is `training.cli`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from signglove_exp import data
from signglove_exp.card import ModelCard
from signglove_exp.models import build_model
from signglove_exp.reporting import figures
from signglove_exp.reporting.compare import SHARED_CPU
from signglove_exp.tracking import logger as run_logger
from signglove_exp.tracking import packaging, records, runs, sweep
from signglove_exp.tracking.queries import run_metrics
from signglove_exp.tracking.store import redact, tracking_uri
from signglove_exp.training.adapt import adapt, at_zero_shots, check_methods, few_shot_grid, metric_name
from signglove_exp.training.augment import Augmenter
from signglove_exp.training.checkpoint_io import AtomicCheckpointIO
from signglove_exp.training.finetune import freeze
from signglove_exp.training.module import Classifier, ProgressBar, latency_ms
from signglove_exp.training.resume_state import ResumeState
from signglove_exp.training.start import Start, starting_point


def loader(arrays, batch_size: int, generator: torch.Generator | None = None) -> DataLoader:
    """A loader over (x, lengths, y); shuffled, by `generator`, when one is given."""
    x, lengths, y = (torch.from_numpy(a) for a in arrays)
    return DataLoader(
        TensorDataset(x, lengths, y),
        batch_size=batch_size or len(y),
        shuffle=generator is not None,
        generator=generator,
    )


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float:
    """What sweepers and searches optimise: `optimized_metric` of the best checkpoint, on validation."""
    return metrics[f"best/{cfg.optimized_metric}"]


def check_objective(cfg: DictConfig) -> None:
    if cfg.optimized_metric not in ("val/loss", "val/acc", "val/f1_macro"):
        raise ValueError(
            f"optimized_metric={cfg.optimized_metric}: must be a validation metric (val/loss, val/acc, "
            "val/f1_macro); test metrics are reported, never optimised"
        )


@dataclass(frozen=True)
class Launch:
    """How the command layer launched this run: Hydra's runtime facts, read there (`training.cli`)."""

    overrides: tuple[str, ...] = ()  # the command line's config overrides, logged as a param
    sweep_dir: Path | None = None  # the multirun's folder (its parent run's record); None for one run
    job_num: int | None = None  # this job's number in the multirun
    parallel_jobs: int | None = 1  # jobs of this multirun sharing the machine (None: one a core)

    def parent(self) -> dict | None:
        """The parent run of the multirun this job belongs to, from the sweep folder's record."""
        return sweep.read_parent(self.sweep_dir) if self.sweep_dir else None


@dataclass
class TrainResult:
    """What `train` leaves behind: a finished MLflow run and, when it trained, what it trained."""

    metrics: dict[str, float]  # test/*, best/*, time/* (and calibration/*): what the run logged at its end
    run_id: str
    start: Start
    best_checkpoint: str | None = None  # None for a run found already finished
    prepared: data.Prepared | None = None
    module: Classifier | None = None


def cpu_threads(cfg: DictConfig, net: torch.nn.Module, parallel_jobs: int | None = 1) -> int:
    """`threads`: a number, or auto. A recurrent network's step is a chain of small matrix products
    that a second thread slows more than it helps; convolutions share well. Parallel jobs of a
    joblib multirun split the cores between them rather than fight over them."""
    if cfg.threads != "auto":
        if not isinstance(cfg.threads, int) or cfg.threads < 1:
            raise ValueError(f"threads={cfg.threads}: must be auto or a whole number of threads >= 1")
        return cfg.threads
    if not any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in net.modules()):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // (parallel_jobs or cores))


def train(cfg: DictConfig, callbacks: tuple[pl.Callback, ...] = (), launch: Launch = Launch()) -> TrainResult:
    """Train and test one configuration, leaving a finished MLflow run. `callbacks` join the
    configured ones (a search's pruning); `launch` says how the command line started it. The run
    folder is this process's alone meanwhile (`records.claimed`)."""
    with records.claimed(Path(cfg.paths.output_dir)):
        return _train(cfg, callbacks, launch)


def _train(cfg: DictConfig, callbacks: tuple[pl.Callback, ...], launch: Launch) -> TrainResult:
    start = starting_point(cfg)
    if start.kind == "finished":
        print(f"Run {start.run_id} already finished: skipped")
        return TrainResult(run_metrics(start.run_id, tracking_uri(start.cfg)), start.run_id, start)
    cfg = start.cfg
    check_objective(cfg)
    check_methods(cfg.calibration.methods)
    if cfg.calibration.choose_on not in ("val", "test"):
        raise ValueError(f"calibration.choose_on={cfg.calibration.choose_on}: val or test")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    reuse_scaler = start.card is not None and (start.kind == "resume" or not cfg.finetune.refit_scaler)
    prepared = data.prepare(cfg.data, cfg.split, start.card.scaler if reuse_scaler else None)
    classes, channels = prepared.corpus.classes, prepared.corpus.channels
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    n_features = len(prepared.preprocess["features"])
    net = build_model(**model_cfg, n_channels=n_features, n_classes=len(classes))
    torch.set_num_threads(cpu_threads(cfg, net, launch.parallel_jobs))
    if start.weights is not None:
        net.load_state_dict(start.weights)
    if cfg.init_from:
        freeze(net, OmegaConf.to_container(cfg.finetune, resolve=True)["train"])
    card = ModelCard(
        model={**model_cfg, "n_channels": n_features, "n_classes": len(classes)},
        classes=classes,
        channels=channels,
        seq_len=prepared.seq_len,
        padding=OmegaConf.to_container(cfg.data.padding, resolve=True),
        scaler=prepared.scaler,
        preprocess=prepared.preprocess,
        data_fingerprint=prepared.corpus.fingerprint,
        config=OmegaConf.to_container(cfg, resolve=True),
        lineage=start.lineage,
    )
    augment = Augmenter(
        OmegaConf.to_container(cfg.augment), cfg.seed, card.preprocess["features"], card.scaler, card.padding
    )
    scheduler = instantiate(cfg.scheduler) if cfg.scheduler else None
    loss = cfg.get("loss") or {}  # a run saved before `loss` existed resumes with cross-entropy alone
    terms = {"supcon": loss.get("supcon", 0.0), "temperature": loss.get("temperature", 0.1)}
    module = Classifier(net, instantiate(cfg.optimizer), scheduler, card, augment, **terms)
    if start.run_id is None and launch.parent():  # jobs starting in the same second: the job number tells
        cfg.tracking.run_name = f"{cfg.tracking.run_name}-job{launch.job_num}"
    tags = run_tags(cfg, prepared, start, out_dir, launch)
    logger = run_logger.make_logger(cfg, tags, start.run_id, out_dir)
    records.write_record(out_dir / records.RUN_RECORD, run_id=logger.run_id, tracking_uri=tracking_uri(cfg))
    if start.run_id is None:
        saved = OmegaConf.to_container(cfg, resolve=True)
        saved["tracking"]["uri"] = saved["tracking"]["uri"] and redact(saved["tracking"]["uri"])
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(saved), encoding="utf-8")
        overrides = list(launch.overrides)
        facts = run_facts(prepared, net)
        client, run_id, corpus = logger.experiment, logger.run_id, prepared.corpus
        logger.send(lambda: runs.log_params(client, run_id, cfg, overrides, facts), "params")
        sizes = {p: len(i) for p, i in prepared.parts.items()}
        logger.send(
            lambda: runs.log_dataset(
                client, run_id, corpus.root.name, corpus.fingerprint, corpus.root, sizes
            ),
            "the dataset",
        )
    elif start.kind == "resume":
        epoch = torch.load(start.checkpoint, map_location="cpu", weights_only=True)["epoch"]
        print(f"Resuming run {start.run_id} after epoch {epoch + 1}, from {start.checkpoint}")
    try:
        metrics, best = fit_and_test(cfg, prepared, module, logger, out_dir, start, callbacks)
    except BaseException as error:
        run_logger.end_run(logger, out_dir, run_logger.stopped_status(error), error)
        raise
    run_logger.end_run(logger, out_dir, "FINISHED")
    tested = "not tested (test=false)"
    if cfg.test:
        tested = f"test acc {metrics['test/acc']:.4f}, macro F1 {metrics['test/f1_macro']:.4f}"
    print(
        f"\n{cfg.model.name}: {tested} (best epoch {int(metrics['best/epoch'])}, validation loss "
        f"{metrics['best/val/loss']:.4f})\nRun folder: {out_dir}"
    )
    if logger.offline:
        print(f"Not yet in MLflow (the store went away): python -m signglove_exp.upload {out_dir}")
    else:
        print(f"MLflow run: {runs.run_link(tracking_uri(cfg), logger.experiment_id, logger.run_id)}")
    return TrainResult(metrics, logger.run_id, start, best or None, prepared, module)


def run_facts(prepared: data.Prepared, net) -> dict[str, int]:
    """Sizes that are fixed once a run starts: params, not metrics."""
    return {
        "model.n_params": sum(p.numel() for p in net.parameters()),
        "model.n_trained": sum(p.numel() for p in net.parameters() if p.requires_grad),
        **{f"data.n_{p}": len(i) for p, i in prepared.parts.items()},
        "data.n_rejected": len(prepared.corpus.rejected),
        "data.n_duplicates": len(prepared.duplicates),
    }


def run_tags(
    cfg: DictConfig, prepared: data.Prepared, start: Start, out_dir: Path, launch: Launch
) -> dict[str, str]:
    """Tags of a new run: data fingerprint, run folder (for resume=RUN_ID), sweep and source links."""
    tags = {"data.fingerprint": prepared.corpus.fingerprint, "signglove.run_dir": str(out_dir.resolve())}
    parent = launch.parent()
    if parent:
        tags.update({"mlflow.parentRunId": parent["run_id"], "sweep": parent["sweep"]})
        if launch.parallel_jobs != 1:
            tags[SHARED_CPU] = "true"  # its time and latency are measured beside other jobs
    elif cfg.tracking.parent_run:
        tags["mlflow.parentRunId"] = cfg.tracking.parent_run
    if start.lineage:
        tags["signglove.init_from"] = start.lineage["source"]
        if start.lineage["source_run"]:
            tags["signglove.source_run"] = start.lineage["source_run"]
            tags["mlflow.note.content"] = f"Fine-tuned from run {start.lineage['source_run']}."
    return tags


def calibration(cfg, prepared: data.Prepared, module: Classifier) -> tuple[dict[str, float], dict[str, str]]:
    """The few-shot grid (`calibration.*`) with the best weights; its metrics and, when the methods
    are chosen on validation (`calibration.choose_on=val`), the method chosen for each k.

    choose_on=val: every method is measured on the validation part, treated as a new person (its
    own statistics under per_signer; `split.val_sessions` makes it a held-out hand-shape variant),
    and for each k only the method best there (accuracy; a tie: the lower loss) is measured on the
    held-out signer, once (`fewshot/chosen/k<k>/...`; the validation grid is `val/fewshot/...`).
    choose_on=test measures every method on the held-out signer: a comparison, not a result."""
    test_signers = {prepared.corpus.episodes[i].signer for i in prepared.parts["test"]}
    if len(test_signers) != 1:
        raise ValueError(
            f"calibration.shots needs a test part of one held-out signer (split=by_signer); "
            f"split.strategy={cfg.split.strategy} tests {len(test_signers)} signers"
        )
    settings = {**OmegaConf.to_container(cfg.calibration, resolve=True), "seed": cfg.split.seed}
    if cfg.calibration.choose_on == "test":
        return _grid(prepared, module, "test", settings), {}
    on_val = _grid(prepared, module, "val", settings)

    def on_val_score(method: str, k: int) -> tuple[float, float]:  # ties in accuracy: the lower loss
        cell = f"fewshot/{metric_name(method)}/k{k}"
        return on_val[f"{cell}/acc"], -on_val[f"{cell}/loss"]

    unlabelled = at_zero_shots(settings["methods"])
    chosen = {0: max(["none", *unlabelled], key=lambda m: on_val_score(m, 0))} if unlabelled else {}
    chosen.update(
        (k, max(settings["methods"], key=lambda m: on_val_score(m, k)))
        for k in sorted(int(k) for k in settings["shots"] if int(k) > 0)
    )
    metrics = {f"val/{key}": value for key, value in on_val.items()}
    metrics.update(_grid(prepared, module, "test", {**settings, "shots": [], "methods": []}))  # k = 0
    for k, method in chosen.items():
        if method == "none":  # k = 0 as trained: measured just above
            as_trained = {key: v for key, v in metrics.items() if key.startswith("fewshot/none/")}
            metrics.update({key.replace("/none/", "/chosen/"): v for key, v in as_trained.items()})
            continue
        on_test = _grid(prepared, module, "test", {**settings, "shots": [k], "methods": [method]})
        cell = f"/{metric_name(method)}/k{k}/"
        metrics.update({key.replace(cell, f"/chosen/k{k}/"): v for key, v in on_test.items() if cell in key})
    return metrics, {f"fewshot.chosen.k{k}": method for k, method in chosen.items()}


def _grid(prepared: data.Prepared, module: Classifier, part: str, settings: dict) -> dict[str, float]:
    """The few-shot grid on one part's episodes as a new person's: under per_signer normalisation
    their statistics come from all of them, labels unused."""
    episodes = [prepared.corpus.episodes[i] for i in prepared.parts[part]]
    raw, labels, card = [e.values for e in episodes], prepared.arrays[part][2], module.card
    if card.preprocess["normalize"] == "per_signer":
        card = adapt(module.net, card, raw, labels, "renorm", {})[1]
    return few_shot_grid(module.net, card, raw, labels, settings)


def fit_and_test(
    cfg, prepared: data.Prepared, module: Classifier, logger, out_dir: Path, start: Start, extra: tuple = ()
):
    reports = data.write_reports(prepared, out_dir)
    if prepared.corpus.rejected:
        n_bad = len(prepared.corpus.rejected)
        print(f"Skipped {n_bad} unusable episode file(s); reasons in {out_dir / 'bad_files.tsv'}")
    if prepared.duplicates:
        print(
            f"{len(prepared.duplicates)} episode file(s) are byte-identical copies of others, each kept in "
            f"its original's part; listed in {out_dir / 'duplicates.tsv'}"
        )

    shuffle = torch.Generator().manual_seed(cfg.seed)
    train_loader = loader(prepared.arrays["train"], cfg.data.batch_size, shuffle)
    val_loader = loader(prepared.arrays["val"], cfg.data.eval_batch_size)
    resume_state = ResumeState(shuffle)
    callbacks = [*(instantiate(c) for c in cfg.callbacks.values()), resume_state, *extra]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(ProgressBar())
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(out_dir),
        plugins=[AtomicCheckpointIO()],
    )
    every_s = cfg.tracking.system_metrics_s
    monitor = runs.system_monitor(tracking_uri(cfg), logger.run_id, every_s) if every_s > 0 else None
    try:
        trainer.fit(
            module, train_loader, val_loader, ckpt_path=start.checkpoint if start.kind == "resume" else None
        )
    finally:
        if monitor:
            monitor.finish()
    train_s = resume_state.elapsed_s()
    best = trainer.checkpoint_callback.best_model_path
    metrics = {}
    if cfg.test:
        test_loader = loader(prepared.arrays["test"], cfg.data.eval_batch_size)
        trainer.test(module, test_loader, ckpt_path=best or None, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    elif best:  # the best weights, as testing would have loaded them
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    validation = module.evaluate(*prepared.arrays["val"], batch_size=cfg.data.eval_batch_size)
    x_test, len_test, _ = (torch.from_numpy(a) for a in prepared.arrays["test"])
    metrics.update(
        {
            **{f"best/val/{k}": v for k, v in validation.items() if k in ("loss", "acc", "f1_macro")},
            "best/epoch": torch.load(best, map_location="cpu", weights_only=True)["epoch"]
            if best
            else trainer.current_epoch,
            "time/train_s": train_s,
            "time/epoch_s": train_s / max(trainer.current_epoch, 1),
            "time/latency_ms": latency_ms(module.net.cpu(), x_test, len_test),
        }
    )
    chosen = {}
    if cfg.calibration.shots and cfg.test:
        grid, chosen = calibration(cfg, prepared, module)
        metrics.update(grid)
    logger.log_metrics({k: v for k, v in metrics.items() if not k.startswith("test/")})

    confusion = []
    if cfg.test:
        title = f"{cfg.model.name} seed {cfg.seed}: test acc {metrics['test/acc']:.4f}"
        confusion = figures.write_confusion(module.test_confusion, prepared.corpus.classes, out_dir, title)
    client, run_id = logger.experiment, logger.run_id
    if cfg.test:
        matrix = (client, run_id, prepared.corpus.classes, module.test_confusion)
        logger.send(lambda: runs.log_confusion(*matrix), "the confusion matrix")
    files = [*reports, out_dir / "config.yaml", *confusion]
    logger.send(lambda: runs.log_files(client, run_id, files), "files")
    if chosen:  # which calibration method each k used, chosen on validation
        logger.send(lambda: runs.log_extra_params(client, run_id, chosen), "params")
    if best:
        logger.send(lambda: runs.log_files(client, run_id, [Path(best)], "checkpoints"), "the checkpoint")
        if cfg.tracking.log_model:
            example = prepared.corpus.root / prepared.corpus.episodes[prepared.parts["test"][0]].path
            model = (tracking_uri(cfg), run_id, Path(best), example, module.card)
            logger.send(lambda: packaging.log_pyfunc(*model), "the pyfunc model")
    return metrics, best
