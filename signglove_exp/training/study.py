"""An Optuna study in an RDB storage: opened (created once, under the store's lock), and the values it
suggests from a search space. Light on purpose (Optuna, no torch): workers open studies at once.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from omegaconf import DictConfig

from signglove_exp.tracking.store import store_lock

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def check_spec(key: str, spec) -> None:
    if not isinstance(spec, dict) or ("choices" not in spec and not {"low", "high"} <= spec.keys()):
        raise ValueError(f"search.params.{key}: give choices, or low and high")


def suggest(trial: optuna.Trial, key: str, spec: dict):
    """One config value from its search-space entry: {choices: [...]} or {low, high, log, step}."""
    check_spec(key, spec)
    if "choices" in spec:
        return trial.suggest_categorical(key, list(spec["choices"]))
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    if isinstance(low, int) and isinstance(high, int):
        return trial.suggest_int(key, low, high, step=spec.get("step", 1), log=log)
    return trial.suggest_float(key, float(low), float(high), log=log)


def trial_sampler(seed: int, trial_number: int) -> optuna.samplers.TPESampler:
    """The sampler of one trial, seeded by the trial's number: the same draws for the same study,
    but a continued search or a second worker (whose trials get new numbers) never repeats them."""
    return optuna.samplers.TPESampler(seed=seed + trial_number)


def direction(metric: str) -> str:
    return "minimize" if metric.endswith("loss") else "maximize"


def open_study(cfg: DictConfig) -> optuna.Study:
    s = cfg.search
    url = s.storage or f"sqlite:///{Path(cfg.paths.outputs).resolve() / 'optuna.db'}"
    with store_lock(url), warnings.catch_warnings():  # workers creating one new SQLite study take turns
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.8
        storage = optuna.storages.RDBStorage(
            url,
            heartbeat_interval=s.heartbeat_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
        return optuna.create_study(
            study_name=s.study or f"{cfg.model.name}-search",
            storage=storage,
            direction=direction(cfg.optimized_metric),
            sampler=trial_sampler(cfg.seed, 0),
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=s.startup_trials, n_warmup_steps=s.warmup_epochs
            ),
            load_if_exists=True,
        )
