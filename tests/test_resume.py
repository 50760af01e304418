"""Runs that continue themselves: SIGKILL then resume=, SIGTERM to a sweep then resume= of the sweep."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import cli_command, cli_env, run_cli, store_overrides

# A GRU on every training batch: each epoch takes about a second, so a kill lands mid-training.
TRAINING = [
    "model=gru",
    "trainer=debug",
    "trainer.max_epochs=4",
    "trainer.limit_train_batches=1.0",
    "seed=3",
    "tracking.log_model=false",  # the pyfunc model is checked elsewhere
]
CURVES = ["train/loss", "val/loss", "val/acc", "train/lr"]
RESULTS = ["test/acc", "test/f1_macro", "test/loss", "best/val/loss", "best/epoch"]


def start(spawn, *args: str, cwd: Path) -> subprocess.Popen:
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    return spawn(cli_command(*args), cwd=cwd, env=cli_env(), **output)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.is_file():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def by_name(client: MlflowClient) -> dict[str, object]:
    runs = client.search_runs([client.get_experiment_by_name("signglove").experiment_id])
    return {r.info.run_name: r for r in runs}


def test_sigkill_mid_training_then_resume_equals_an_uninterrupted_run(tmp_path, cache_dir, spawn):
    store = store_overrides(tmp_path, cache_dir)
    folder = tmp_path / "cut"
    proc = start(spawn, *store, *TRAINING, "tracking.run_name=cut", f"hydra.run.dir={folder}", cwd=tmp_path)
    wait_for(folder / "checkpoints" / "last.ckpt", proc)  # one epoch is done, the next is training
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    while not all(history(client, by_name(client)["cut"].info.run_id, key) for key in CURVES):
        assert proc.poll() is None, proc.stdout.read()[-3000:]  # and its curves are in MLflow
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    cut = by_name(client)["cut"]
    assert cut.info.status == "RUNNING"  # a SIGKILL gives no chance to end the run
    assert 1 <= len(history(client, cut.info.run_id, "val/loss")) < 4
    assert (folder / "config.yaml").is_file()  # the folder holds what resume needs

    # The next run against the store finds the orphan and marks it, with how to continue it.
    whole = run_cli(
        *store, *TRAINING, "tracking.run_name=whole", f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path
    )
    assert f"Run {cut.info.run_id} was left RUNNING by a process that is gone: marked KILLED" in whole.stdout
    assert client.get_run(cut.info.run_id).info.status == "KILLED"

    uri = f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"
    resumed = run_cli(f"resume={cut.info.run_id}", uri, cwd=tmp_path)
    assert f"Resuming run {cut.info.run_id} after epoch" in resumed.stdout

    runs = by_name(client)
    assert set(runs) == {"whole", "cut"}  # no new run: the same run id continued
    whole, cut = runs["whole"], runs["cut"]
    assert cut.info.status == "FINISHED"
    for key in CURVES:  # every epoch once, none missing, none twice
        assert history(client, cut.info.run_id, key) == history(client, whole.info.run_id, key), key
    for key in RESULTS:
        assert cut.data.metrics[key] == whole.data.metrics[key], key


def test_sigterm_stops_a_sweep_and_resume_completes_it(tmp_path, cache_dir, spawn):
    sweep = tmp_path / "sw"
    proc = start(
        spawn,
        "-m",
        *store_overrides(tmp_path, cache_dir),
        *TRAINING,
        "seed=1,2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    wait_for(sweep / "1_gru" / "checkpoints" / "last.ckpt", proc)  # the second job is training
    proc.send_signal(signal.SIGTERM)  # a scheduler's preemption
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM and "Stopped by SIGTERM." in output, output[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("signglove").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    jobs = {r.data.params["seed"]: r for r in runs if r is not parent}
    assert parent.info.status == "KILLED"
    assert {s: r.info.status for s, r in jobs.items()} == {"1": "FINISHED", "2": "KILLED"}

    resumed = run_cli(f"resume={sweep}", cwd=tmp_path)
    assert f"Run {jobs['1'].info.run_id} already finished: skipped" in resumed.stdout
    assert f"Resuming run {jobs['2'].info.run_id} after epoch" in resumed.stdout
    runs = client.search_runs([client.get_experiment_by_name("signglove").experiment_id])
    assert {r.info.run_id for r in runs} == {parent.info.run_id, *(r.info.run_id for r in jobs.values())}
    assert {r.info.run_id: r.info.status for r in runs} == {r.info.run_id: "FINISHED" for r in runs}
    report = (sweep / "report" / "report.md").read_text(encoding="utf-8")
    assert "2 finished runs" in report
    logged = client.download_artifacts(parent.info.run_id, "report/report.md", str(tmp_path))
    assert Path(logged).read_text(encoding="utf-8") == report


def test_a_run_folder_is_not_reused_for_another_config(make_cfg):
    from signglove_exp.training.train import train

    overrides = ["trainer=debug", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    train(make_cfg(*overrides))
    refused = r"holds run \w+, started with other values of seed: give this run its own"
    with pytest.raises(ValueError, match=refused):
        train(make_cfg(*overrides, "seed=2"))
    result = train(make_cfg(*overrides))  # the same config again: that finished run, not a new one
    assert result.start.kind == "finished" and "test/acc" in result.metrics
