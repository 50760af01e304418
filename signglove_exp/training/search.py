"""An Optuna study over `train(cfg)`: each trial a config sampled from `search.params`, trained as an
MLflow child run of the study's parent run and stopped early when Optuna's pruner says it trails.

The study lives in an RDB storage, so a killed search continues where it stopped (a trial whose
process died is failed after its heartbeat lapses and retried once) and several processes can work
on one study. The objective is `optimized_metric` on validation; trials are never tested, and the
best trial's checkpoint is tested once at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from signglove_exp import data
from signglove_exp.card import read_checkpoint
from signglove_exp.metrics import classification_metrics
from signglove_exp.models import batched_logits
from signglove_exp.reporting import figures
from signglove_exp.tracking import runs
from signglove_exp.tracking.queries import run_metrics, run_status
from signglove_exp.tracking.store import store_lock, tracking_uri
from signglove_exp.training.cli import compose
from signglove_exp.training.study import FINISHED, check_spec, open_study, suggest, trial_sampler
from signglove_exp.training.train import check_objective, objective, train


class Pruning(pl.Callback):
    """Reports the objective after each validation epoch; stops a trial the pruner would prune (the
    run then ends normally, FINISHED and tagged `optuna.state=PRUNED`)."""

    def __init__(self, trial: optuna.Trial, monitor: str):
        self.trial, self.monitor, self.pruned = trial, monitor, False

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        self.trial.report(float(value), trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned = trainer.should_stop = True


def run_search(cfg: DictConfig, overrides: list[str]) -> dict:
    """The study run to `search.n_trials` finished trials; the best trial's values and test metrics."""
    check_search(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, uri = open_study(cfg), tracking_uri(cfg)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    parent = study.user_attrs.get("mlflow_parent_run")
    if parent and done >= cfg.search.n_trials and run_status(parent, uri) == "FINISHED":
        return finished(cfg, study, parent)
    if parent is None:
        tags = {"optuna.study": study.study_name, "signglove.kind": "search"}
        parent = runs.open_parent(cfg, f"search-{study.study_name}", tags)
        study.set_user_attr("mlflow_parent_run", parent)
    else:  # a study continued: its parent run again
        runs.tag_run(uri, parent, {}, status="RUNNING")
    root = Path(cfg.paths.outputs) / "search" / study.study_name
    space = OmegaConf.to_container(cfg.search.params, resolve=True)

    def run_trial(trial: optuna.Trial) -> float:
        study.sampler = trial_sampler(cfg.seed, trial.number)  # a restarted or second worker draws anew
        values = {key: suggest(trial, key, spec) for key, spec in space.items()}
        trial_cfg = compose(
            *overrides,
            *(f"{k}={v}" for k, v in values.items()),
            f"paths.output_dir={root / f'trial-{trial.number:03d}'}",
            f"tracking.run_name={study.study_name}-trial{trial.number:03d}",
            f"tracking.parent_run={parent}",
            "test=false",
            "tracking.log_model=false",
        )
        pruning = Pruning(trial, trial_cfg.optimized_metric)
        result = train(trial_cfg, callbacks=(pruning,))
        trial.set_user_attr("run_id", result.run_id)
        trial.set_user_attr("checkpoint", str(result.best_checkpoint))
        state = "PRUNED" if pruning.pruned else "COMPLETE"
        runs.tag_run(uri, result.run_id, {"optuna.trial": str(trial.number), "optuna.state": state})
        if pruning.pruned:
            raise optuna.TrialPruned()
        return objective(trial_cfg, result.metrics)

    try:
        if done < cfg.search.n_trials:
            stop = optuna.study.MaxTrialsCallback(cfg.search.n_trials, states=FINISHED)
            study.optimize(run_trial, n_trials=cfg.search.n_trials - done, callbacks=[stop])
        with store_lock(uri):  # two workers ending one study: the first writes its result
            if run_status(parent, uri) == "FINISHED":
                return finished(cfg, study, parent)
            return finish(cfg, study, parent, root)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C or SIGTERM (Lightning exits on them): parent KILLED
        runs.tag_run(uri, parent, {}, status="KILLED")
        print(f"Stopped. The same command continues study {study.study_name}.", file=sys.stderr)
        raise
    except BaseException:  # never a parent left RUNNING by a search that is gone
        runs.tag_run(uri, parent, {}, status="FAILED")
        raise


def check_search(cfg: DictConfig) -> None:
    """A search's settings, checked before its study or parent run exist."""
    check_objective(cfg)
    if cfg.search.n_trials < 1:
        raise ValueError(f"search.n_trials={cfg.search.n_trials}: a search needs at least 1 trial")
    if not cfg.search.params:
        raise ValueError("search.params is empty: name a search space, e.g. search=gru (conf/search/)")
    absent = object()
    for key, spec in OmegaConf.to_container(cfg.search.params, resolve=True).items():
        if OmegaConf.select(cfg, key, default=absent) is absent:
            raise ValueError(f"search.params.{key}: not a config key (see python -m signglove_exp --cfg job)")
        check_spec(key, spec)


def finished(cfg: DictConfig, study: optuna.Study, parent: str) -> dict:
    """A study that already has its trials and its result: that result, nothing run again."""
    best = study.best_trial
    print(
        f"Study {study.study_name} already has its {cfg.search.n_trials} trials: its result is run {parent} "
        f"(best trial {best.number}, {cfg.optimized_metric} {best.value:.4f}); raise search.n_trials for more"
    )
    metrics = run_metrics(parent, tracking_uri(cfg))
    return {"best_trial": best.number, "best_value": best.value, "params": best.params, **metrics}


def finish(cfg: DictConfig, study: optuna.Study, parent: str, root: Path) -> dict:
    """The best trial's checkpoint tested once, and the study's summary and plots on the parent run."""
    best = study.best_trial
    test = test_checkpoint(Path(best.user_attrs["checkpoint"]))
    uri = tracking_uri(cfg)
    runs.tag_run(uri, best.user_attrs["run_id"], {"optuna.best": "true"})
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState}
    params = {**{f"best.{k}": v for k, v in best.params.items()}, "best.trial": best.number}
    metrics = {f"best/{cfg.optimized_metric}": best.value, **{f"test/{k}": v for k, v in test.items()}}
    metrics.update({f"trials/{k}": v for k, v in counts.items() if v})
    root.mkdir(parents=True, exist_ok=True)
    files = figures.study_plots(study, root)
    runs.close_parent(uri, parent, params, metrics, files, "FINISHED")
    print(
        f"Study {study.study_name}: {counts['complete']} complete, {counts['pruned']} pruned. Best trial "
        f"{best.number}: {cfg.optimized_metric} {best.value:.4f}, test acc {test['acc']:.4f} (tested once)\n"
        f"  {', '.join(f'{k}={v}' for k, v in best.params.items())}"
    )
    return {"best_trial": best.number, "best_value": best.value, "params": best.params, **metrics}


@torch.no_grad()
def test_checkpoint(checkpoint: Path) -> dict[str, float]:
    """A checkpoint on its own run's test part, prepared as it was trained (its card's config)."""
    card, state, _ = read_checkpoint(checkpoint)
    cfg = OmegaConf.create(card.config)
    x, lengths, y = data.prepare(cfg.data, cfg.split, card.scaler).arrays["test"]
    logits = batched_logits(card.build_net(state), x, lengths)
    return classification_metrics(y, logits.argmax(1).numpy())
