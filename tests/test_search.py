"""Optuna search: one command, trials as child runs of one parent, pruning, a study that survives a kill."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from signglove_exp import search
from signglove_exp.tracking.store import store_lock
from tests.conftest import cli_env, store_overrides

FAST = ["trainer=debug", "trainer.max_epochs=4", "trainer.limit_train_batches=3", "search.warmup_epochs=1"]


def study_overrides(tmp_path, cache_dir, n_trials: int) -> list[str]:
    return [
        *store_overrides(tmp_path, cache_dir),
        "search=gru",
        f"search.n_trials={n_trials}",
        "search.startup_trials=2",
        f"search.storage=sqlite:///{tmp_path / 'optuna.db'}",
        *FAST,
    ]


def test_a_study_prunes_logs_every_trial_under_one_parent_and_tests_only_the_best(tmp_path, cache_dir):
    result = search.main(study_overrides(tmp_path, cache_dir, 6))
    study = optuna.load_study(study_name="gru-search", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == 6 and optuna.trial.TrialState.PRUNED in states
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("signglove").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("signglove.kind") == "search"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in trials) == list(range(6))
    assert not any(k.startswith("test/") for r in trials for k in r.data.metrics)  # trials are never tested
    assert parent.data.metrics["test/acc"] == result["test/acc"] and parent.info.status == "FINISHED"
    assert parent.data.metrics["best/val/loss"] == study.best_value
    (best,) = [r for r in trials if r.data.tags.get("optuna.best") == "true"]
    assert int(best.data.tags["optuna.trial"]) == study.best_trial.number
    assert float(best.data.params["optimizer.lr"]) == study.best_params["optimizer.lr"]
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/optimization_history.png", "report/param_importances.png"} <= names

    # A worker on a study that has its trials (it used to fail in MLflow): the result, nothing rerun.
    again = search.main(study_overrides(tmp_path, cache_dir, 6))
    assert again["test/acc"] == result["test/acc"] and again["best_trial"] == result["best_trial"]
    assert (
        len(optuna.load_study(study_name="gru-search", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials)
        == 6
    )
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_a_killed_search_continues_its_study_and_parent_run(tmp_path, cache_dir, spawn):
    overrides = study_overrides(tmp_path, cache_dir, 4)
    proc = spawn([sys.executable, "-m", "signglove_exp.search", *overrides], cwd=tmp_path, env=cli_env())
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(1)
        try:
            with store_lock(storage):  # not while the search creates the database
                trials = optuna.load_study(study_name="gru-search", storage=storage).trials
        except KeyError:
            continue
        if sum(t.state.is_finished() for t in trials) >= 1:
            break
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    parent_before = optuna.load_study(study_name="gru-search", storage=storage).user_attrs[
        "mlflow_parent_run"
    ]
    result = search.main([*overrides, "search.heartbeat_s=1"])
    study = optuna.load_study(study_name="gru-search", storage=storage)
    assert study.user_attrs["mlflow_parent_run"] == parent_before
    assert (
        sum(
            t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            for t in study.trials
        )
        >= 4
    )
    assert result["best_trial"] == study.best_trial.number
    drawn = [tuple(sorted(t.params.items())) for t in study.trials if "failed_trial" not in t.system_attrs]
    assert len(set(drawn)) == len(drawn)  # drawn anew, not its first draws again (a retry repeats its trial)


@pytest.mark.parametrize(
    "override, message",
    [
        ("search.n_trials=0", r"search.n_trials=0: a search needs at least 1 trial"),
        ("+search.params.epochs={choices:[1]}", r"search.params.epochs: not a config key"),
        ("optimized_metric=val/nothing", r"optimized_metric=val/nothing: must be a validation metric"),
        ("+search.params.seed=7", r"search.params.seed: give choices, or low and high"),
    ],
)
def test_bad_search_settings_are_refused_before_a_study_or_run_exists(tmp_path, cache_dir, override, message):
    with pytest.raises(ValueError, match=message):
        search.main([*study_overrides(tmp_path, cache_dir, 2), override])
    assert not (tmp_path / "optuna.db").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_search_whose_trial_fails_ends_its_parent_run_failed(tmp_path, cache_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        search.main([*study_overrides(tmp_path, cache_dir, 2), f"data.root={tmp_path / 'none'}"])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("signglove").experiment_id])
    assert parent.data.tags["signglove.kind"] == "search" and parent.info.status == "FAILED"


WORKER = """
import sys, time
from pathlib import Path
from signglove_exp.training.cli import compose
from signglove_exp.training.study import open_study
cfg = compose("search=gru", f"paths.outputs={sys.argv[1]}")
print("ready", flush=True)
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
print(open_study(cfg).study_name)
"""


def test_workers_opening_one_new_study_at_once_all_open_the_same_one(tmp_path):
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for w in workers:
        assert w.stdout.readline().strip() == "ready", w.stderr.read()[-2000:]
    go.touch()  # all at once, on a database none has created
    done = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0] * 3, [err[-600:] for _, err in done]
    assert [out.strip() for out, _ in done] == ["gru-search"] * 3
    assert len(optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}")) == 1


def test_every_search_space_names_real_config_keys():
    from omegaconf import OmegaConf

    from signglove_exp import CONF_DIR
    from signglove_exp.training.cli import compose

    for preset in sorted(p.stem for p in (CONF_DIR / "search").glob("*.yaml")):
        cfg = compose(f"search={preset}")
        assert cfg.model.name == preset and cfg.search.params
        for key in cfg.search.params:
            assert OmegaConf.select(cfg, key) is not None, f"search={preset}: {key} is not a config key"
