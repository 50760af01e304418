"""Real runs, read back through the MLflow client: what a user of the UI would see."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from signglove_exp import data
from signglove_exp.card import load_model
from signglove_exp.metrics import classification_metrics
from signglove_exp.reporting import figures
from signglove_exp.training.train import train
from tests.conftest import cli_command, cli_env, compose_config, episodes_root, run_cli, store_overrides

TEST_METRICS = ["test/acc", "test/balanced_acc", "test/f1_macro", "test/precision_macro", "test/recall_macro"]


def all_artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for a in client.list_artifacts(run_id, path):
        out += all_artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def test_run_logs_flat_params_and_overrides(cli_run):
    _, run, _, _ = cli_run
    p = run.data.params
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("gru-seed7-")
    assert p["model.name"] == "gru" and p["data.seq_len"] == "87" and p["optimizer.lr"] == "0.001"
    assert p["trainer.max_epochs"] == "3" and p["split.strategy"] == "stratified"
    assert "model=gru" in p["overrides"] and "seed=7" in p["overrides"]


def test_run_logs_per_epoch_and_test_metrics(cli_run):
    client, run, _, _ = cli_run
    for key in ["train/loss", "val/loss", "val/acc", "val/f1_macro"]:
        assert len(client.get_metric_history(run.info.run_id, key)) == 3, key
    for key in TEST_METRICS:
        assert 0.0 <= run.data.metrics[key] <= 1.0
    assert run.data.params["model.n_params"] == "25624"
    assert run.data.metrics["test/recall_macro"] == pytest.approx(run.data.metrics["test/balanced_acc"])


def test_the_mlflow_ui_shows_a_model_training_run_with_its_dataset_and_clean_names(cli_run):
    client, run, _, output = cli_run
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI view
    (dataset,) = run.inputs.dataset_inputs
    assert (
        dataset.dataset.name == "signglove"
        and dataset.dataset.digest == run.data.tags["data.fingerprint"][:36]
    )
    assert json.loads(dataset.dataset.profile) == {"train": 1729, "val": 577, "test": 577}
    for key, value in run.data.params.items():  # the user's settings: no Hydra plumbing, no folders
        assert not key.endswith(("_target_", "_partial_")) and not value.startswith("/"), (key, value)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [0, 1, 2]  # epochs
    assert all(re.fullmatch(r"[a-z]+(/[a-z0-9_]+)+", k) for k in run.data.metrics), sorted(run.data.metrics)
    assert "epoch" not in run.data.metrics and "model/n_params" not in run.data.metrics  # a param
    assert "v_num" not in output and "Seed set to" not in output and "Creating initial MLflow" not in output
    assert f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in output


def test_system_metrics_are_an_option(make_cfg):
    quick = [
        "trainer=debug",
        "trainer.limit_train_batches=1.0",  # two epochs of every batch: seconds, several samples
        "tracking.log_model=false",
    ]
    cfg = make_cfg(*quick, "tracking.system_metrics_s=0.5")
    result = train(cfg)
    metrics = MlflowClient(cfg.tracking.uri).get_run(result.run_id).data.metrics
    assert (
        "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics
    )


def test_run_tags_commit_and_data_fingerprint(cli_run):
    _, run, _, _ = cli_run
    corpus = data.load_corpus(episodes_root(), ["ㄱ"], ["flex1"], 1)
    assert run.data.tags["data.fingerprint"] == corpus.fingerprint
    assert run.data.tags["mlflow.source.git.commit"] not in ("", "unknown")


def test_run_logs_every_artifact(cli_run, tmp_path):
    client, run, _, _ = cli_run
    arts = all_artifacts(client, run.info.run_id)
    for name in [
        "scaler.json",
        "config.yaml",
        "bad_files.tsv",
        "split_manifest.csv",
        "confusion_matrix.png",
        "confusion_matrix.csv",
    ]:
        assert name in arts
    (ckpt,) = [a for a in arts if a.endswith(".ckpt")]
    assert ckpt.startswith("checkpoints/epoch") and "/" not in ckpt.removeprefix("checkpoints/")
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    bad = (local / "bad_files.tsv").read_text(encoding="utf-8")
    assert "unified_HB/ㅊ/3/episode_20251001_154132_ㅊ_3.csv\ttoo short: 1 rows" in bad
    with open(local / "confusion_matrix.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == compose_config().data.classes
    counts = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    assert counts.sum() == 577
    assert np.trace(counts) / 577 == pytest.approx(run.data.metrics["test/acc"], abs=1e-6)
    scaler = json.loads((local / "scaler.json").read_text(encoding="utf-8"))
    assert scaler["channels"] == ["flex1", "flex2", "flex3", "flex4", "flex5", "pitch", "roll", "yaw"]
    assert "model:\n  name: gru" in (local / "config.yaml").read_text(encoding="utf-8")


def test_logged_checkpoint_alone_reproduces_the_logged_test_metrics(cli_run, tmp_path, cache_dir):
    client, run, _, _ = cli_run
    (ckpt,) = [a for a in all_artifacts(client, run.info.run_id) if a.endswith(".ckpt")]
    net, card = load_model(client.download_artifacts(run.info.run_id, ckpt, str(tmp_path)))
    assert card.name == "gru" and card.classes[0] == "ㄱ" and card.seq_len == 87
    cfg = compose_config(f"data.cache_dir={cache_dir}")
    corpus = data.load_corpus(
        cfg.data.root,
        card.classes,
        card.channels,
        cfg.data.min_len,
        cfg.data.signer_prefix,
        cache_dir=cache_dir,
    )
    test = data.split(corpus, cfg.split)["test"]
    x, lengths = data.to_arrays(
        [corpus.episodes[i].values for i in test], card.scaler, card.seq_len, card.padding
    )
    with torch.no_grad():
        pred = net(torch.from_numpy(x), torch.from_numpy(lengths)).argmax(1).numpy()
    ours = classification_metrics(np.array([corpus.episodes[i].label for i in test]), pred)
    for key in TEST_METRICS:
        assert ours[key.removeprefix("test/")] == pytest.approx(run.data.metrics[key], abs=1e-6), key


def test_same_config_twice_gives_the_same_test_metrics(make_cfg, tmp_path):
    overrides = ["model=ms3d_gru", "trainer=debug", "trainer.max_epochs=1", "trainer.limit_train_batches=3"]
    overrides += ["+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2", "tracking.log_model=false"]
    first = train(make_cfg(*overrides, f"paths.output_dir={tmp_path / 'first'}"))
    second = train(make_cfg(*overrides, f"paths.output_dir={tmp_path / 'second'}"))
    for key in TEST_METRICS:
        assert first.metrics[key] == second.metrics[key]


def test_sweep_trains_all_four_models_as_one_group(tmp_path, cache_dir):
    proc = run_cli(
        *store_overrides(tmp_path, cache_dir),
        "sweep=all_models",
        "trainer=debug",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2",
        "tracking.log_model=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("signglove").experiment_id
    runs = client.search_runs([exp])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 5 and len(children) == 4
    assert sorted(r.data.params["model.name"] for r in children) == [
        "gru",
        "ms3d_gru",
        "ms3d_stacked_gru",
        "stacked_gru",
    ]
    assert {r.data.tags["sweep"] for r in children} == {parent.data.tags["sweep"]} == {"sweep"}
    assert parent.info.status == "FINISHED"
    assert "sweep_summary.md" in all_artifacts(client, parent.info.run_id)
    table = (tmp_path / "sweep" / "sweep_summary.md").read_text(encoding="utf-8")
    assert table in proc.stdout
    for r in children:
        row = next(
            line for line in table.splitlines() if line.startswith(f"| {r.data.params['model.name']} |")
        )
        assert (
            f"{r.data.metrics['test/acc']:.4f}" in row and f"{int(r.data.params['model.n_params']):,}" in row
        )


def runs_by(client: MlflowClient, param: str) -> tuple[object, dict[str, object]]:
    """A sweep's parent run and its child runs keyed by one param's value."""
    runs = client.search_runs([client.get_experiment_by_name("signglove").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parent, {r.data.params.get(param): r for r in runs if r is not parent}  # params may be on the way


def test_ctrl_c_ends_every_run_of_a_sweep_and_reports_what_finished(tmp_path, cache_dir, spawn):
    """Ctrl-C reaches the whole process group: the launcher and its joblib workers. (A serial sweep
    stopped by a signal: test_resume's SIGTERM test, through the same handler.)"""
    launcher = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    sweep = spawn(
        cli_command(
            "-m",
            *store_overrides(tmp_path, cache_dir),
            "model=gru",
            "trainer=debug",
            "trainer.max_epochs=1,1000",
            "trainer.limit_train_batches=5",
            "callbacks.early_stopping.patience=1000",
            *launcher,
            f"hydra.sweep.dir={tmp_path / 'sw'}",
        ),
        cwd=tmp_path,
        env=cli_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal, even under nohup
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in sweep.stdout:  # the one-epoch job has finished
        if "test acc" in line:
            break
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for _ in range(1200):  # and the long one is training
        _, runs = runs_by(client, "trainer.max_epochs")
        if "1000" in runs:
            break
        time.sleep(0.1)
    os.killpg(sweep.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole process group
    output = sweep.communicate(timeout=120)[0]
    assert sweep.returncode == 130 and "Stopped by Ctrl-C." in output
    parent, runs = runs_by(client, "trainer.max_epochs")
    assert {k: r.info.status for k, r in runs.items()} == {"1": "FINISHED", "1000": "KILLED"}
    assert parent.info.status == "KILLED"
    text = (tmp_path / "sw" / "report" / "report.md").read_text(encoding="utf-8")
    assert re.search(r"^1 finished run", text, re.M)
    assert "report/report.md" in all_artifacts(client, parent.info.run_id)


def test_a_broken_job_fails_the_sweep_but_the_others_are_reported(tmp_path, cache_dir):
    proc = run_cli(
        "-m",
        *store_overrides(tmp_path, cache_dir),
        "model=gru",
        "trainer=debug",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "optimizer.lr=1e-3,-1",  # AdamW refuses a negative learning rate once training starts
        f"hydra.sweep.dir={tmp_path / 'sw'}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1
    parent, runs = runs_by(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "optimizer.lr")
    assert parent.info.status == "FAILED" and "Invalid learning rate" in proc.stderr
    assert {float(k): r.info.status for k, r in runs.items()} == {1e-3: "FINISHED", -1: "FAILED"}
    assert (tmp_path / "sw" / "report" / "report.md").is_file()


def test_confusion_matrix_draws_hangul_without_missing_glyphs(tmp_path):
    classes = list(compose_config().data.classes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures.confusion_matrix_figure(
            np.eye(24, dtype=int) * 5, classes, tmp_path / "cm.png", "jamo ㄱ..ㅣ"
        )
    assert (tmp_path / "cm.png").stat().st_size > 10_000
