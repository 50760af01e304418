"""Runs that continue themselves: SIGKILL then resume=, SIGTERM to a sweep then resume= of the sweep."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from tests.conftest import cli_command, cli_env, run_cli, store_overrides

# A GRU on every training batch: each epoch takes about a second, so a kill lands mid-training.
TRAINING = [
    "model=gru",
    "trainer=debug",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=1.0",
    "seed=3",
    "tracking.log_model=false",  # the pyfunc model is checked elsewhere
]
CURVES = ["train/loss", "val/loss", "val/acc", "train/lr"]
RESULTS = ["test/acc", "test/f1_macro", "test/loss", "best/val/loss", "best/epoch"]


def start(spawn, *args: str, cwd: Path) -> subprocess.Popen:
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    return spawn(cli_command(*args), cwd=cwd, env=cli_env(), **output)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300, every_s: float = 0.05) -> None:
    deadline = time.time() + timeout
    while not path.is_file():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(every_s)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def by_name(client: MlflowClient) -> dict[str, object]:
    runs = client.search_runs([client.get_experiment_by_name("signglove").experiment_id])
    return {r.info.run_name: r for r in runs}


def test_sigkill_mid_training_then_resume_equals_an_uninterrupted_run(tmp_path, cache_dir, spawn):
    store = store_overrides(tmp_path, cache_dir)
    folder = tmp_path / "cut"
    proc = start(spawn, *store, *TRAINING, "tracking.run_name=cut", f"hydra.run.dir={folder}", cwd=tmp_path)
    # Killed the moment its first checkpoint is written: the epoch's curves must already be in MLflow.
    wait_for(folder / "checkpoints" / "last.ckpt", proc, every_s=0.001)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cut = by_name(client)["cut"]
    assert cut.info.status == "RUNNING"  # a SIGKILL gives no chance to end the run
    assert 1 <= len(history(client, cut.info.run_id, "val/loss")) < 3
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
    refused = r"holds run \w+, started with other values of seed: a run continues with the values it was"
    with pytest.raises(ValueError, match=refused):
        train(make_cfg(*overrides, "seed=2"))
    result = train(make_cfg(*overrides))  # the same config again: that finished run, not a new one
    assert result.start.kind == "finished" and "test/acc" in result.metrics


def test_a_moved_run_folder_resumes_where_it_is_from_any_folder_and_store_variable(tmp_path, cache_dir):
    """Moved, resumed from another working folder with $MLFLOW_TRACKING_URI naming another store: it
    was refused (suggesting the same command) or a traceback. Its record names its store; its files
    go where the folder is now. (Marked KILLED while testing, the state a kill after training leaves.)"""
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    first.mkdir()
    elsewhere.mkdir()
    store = store_overrides(tmp_path, cache_dir)
    quick = [
        "trainer=debug",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "tracking.log_model=false",
    ]
    run_cli(*store, *quick, f"hydra.run.dir={first / 'run'}", cwd=first)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = by_name(client).values()
    client.set_terminated(run.info.run_id, "KILLED")
    moved = Path(shutil.move(first / "run", elsewhere / "moved"))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'other.db'}"}
    resumed = run_cli(f"resume={moved}", cwd=elsewhere, env=env)
    assert (
        f"Resuming run {run.info.run_id} after epoch 1, from {moved / 'checkpoints' / 'last.ckpt'}"
        in resumed.stdout
    )
    assert f"Run folder: {moved}" in resumed.stdout
    after = client.get_run(run.info.run_id)
    assert after.info.status == "FINISHED" and after.data.tags["signglove.run_dir"] == str(moved)
    assert not (first / "run").exists() and not (tmp_path / "other.db").exists()


def test_a_run_folder_is_data_resume_instantiates_only_the_projects_targets(tmp_path, cli_run):
    """config.yaml and .hydra/hydra.yaml edited to name builtins.open: resume= ran it. Refused now,
    from either file, before anything runs."""
    run = cli_run[1]
    opened = tmp_path / "opened"
    in_config = Path(shutil.copytree(run.data.tags["signglove.run_dir"], tmp_path / "config-edited"))
    saved = OmegaConf.load(in_config / "config.yaml")
    saved.callbacks.evil = {"_target_": "builtins.open", "file": str(opened), "mode": "w"}
    OmegaConf.save(saved, in_config / "config.yaml")
    in_both = Path(shutil.copytree(in_config, tmp_path / "both-edited"))
    hydra_yaml = OmegaConf.load(in_both / ".hydra" / "hydra.yaml")
    hydra_yaml.hydra.overrides.task.append(f"+callbacks.evil={{_target_:builtins.open,file:{opened},mode:w}}")
    OmegaConf.save(hydra_yaml, in_both / ".hydra" / "hydra.yaml")
    for folder, where in ((in_config, "config.yaml"), (in_both, "hydra.yaml")):
        proc = run_cli(f"resume={folder}", cwd=tmp_path, check=False)
        assert proc.returncode == 1, proc.stdout[-2000:]
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("Error: ") and where in line and "builtins.open" in line, line
        assert "a run folder is data, and resume instantiates only signglove_exp." in line
    assert not opened.exists()
