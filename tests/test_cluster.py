"""Cluster multiruns through Hydra's submitit launcher, run for real with its local executor: one
parent run with its report, a preempted job (SIGTERM) requeued into its own MLflow run."""

from __future__ import annotations

import json
import os
import signal
import time

from mlflow.tracking import MlflowClient

from tests.conftest import cli_command, cli_env, store_overrides

PREEMPTIBLE = {"SUBMITIT_PREEMPT_SIGNAL": "TERM"}  # what hydra/launcher=slurm sets on the cluster


def children(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("signglove").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, parent, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def test_a_submitit_sweep_lands_under_one_parent_and_a_preempted_job_resumes_into_its_run(
    tmp_path, cache_dir, spawn
):
    sweep = tmp_path / "sw"
    proc = spawn(
        cli_command(
            "-m",
            *store_overrides(tmp_path, cache_dir),
            "hydra/launcher=submitit_local",
            "model=gru",
            "seed=1",  # one job: the parent, the preemption and the requeue are the point
            "trainer=debug",
            "trainer.max_epochs=4",
            "trainer.limit_train_batches=6",
            "callbacks.early_stopping.patience=100",
            "tracking.log_model=false",
            f"hydra.sweep.dir={sweep}",
        ),
        cwd=tmp_path,
        env=cli_env() | PREEMPTIBLE,
    )
    job = sweep / "0_gru"
    deadline = time.time() + 300
    while not (job / "checkpoints" / "last.ckpt").is_file():
        assert time.time() < deadline and proc.poll() is None, "the job never saved a checkpoint"
        time.sleep(0.05)
    first = json.loads((job / "run.json").read_text(encoding="utf-8"))
    os.kill(first["pid"], signal.SIGTERM)  # the cluster preempts the job
    assert proc.wait(timeout=600) == 0
    again = json.loads((job / "run.json").read_text(encoding="utf-8"))
    assert again["run_id"] == first["run_id"] and again["pid"] != first["pid"]  # requeued, same run
    client, parent, jobs = children(tmp_path)
    assert [r.data.params["seed"] for r in jobs] == ["1"]  # one run: the requeue started none
    assert all(r.info.status == "FINISHED" for r in [parent, *jobs])
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    steps = [m.step for m in client.get_metric_history(first["run_id"], "val/loss")]
    assert len(steps) == len(set(steps)) == 4  # every epoch once, across the two processes
    log = "".join(
        p.read_text(encoding="utf-8", errors="replace") for p in (sweep / ".submitit").rglob("*.out")
    )
    assert "Resuming run" in log
