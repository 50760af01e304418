"""A team's tracking server: a real `mlflow server` on 127.0.0.1 (the model behind HTTP, `mlflow models
serve`, is checked with the README's command in test_readme.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlflow.tracking import MlflowClient

from signglove_exp import report
from tests.conftest import free_port, run_cli, start_server, store_overrides


def every_artifact(client: MlflowClient, run_id: str, path: str | None = None) -> list:
    found = []
    for a in client.list_artifacts(run_id, path):
        found += every_artifact(client, run_id, a.path) if a.is_dir else [a]
    return found


def test_a_sweep_against_a_shared_server_downloads_back_and_reports_without_files(
    tmp_path, cache_dir, spawn, monkeypatch
):
    """Also: the store's URI with a user and password in it is never printed, stored or logged."""
    port = free_port()
    start_server(spawn, tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    overrides = [o for o in store_overrides(tmp_path, cache_dir) if not o.startswith("tracking.uri=")]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    sweep = [
        "-m",
        *overrides,
        "model=gru",
        "seed=1,2",
        "trainer=debug",
        "tracking.log_model=false",
        f"hydra.sweep.dir={tmp_path / 'sw'}",
    ]
    with_password = f"http://alice:s3cret@127.0.0.1:{port}"  # a team server behind basic auth, say
    done = run_cli(*sweep, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": with_password})
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("signglove").experiment_id])
    assert len(runs) == 3 and not (tmp_path / "outputs" / "mlflow.db").exists()
    assert f"MLflow run: {uri}/#/experiments/" in done.stdout  # the link, without the credentials
    written = [p for p in (tmp_path / "sw").rglob("*") if p.is_file() and p.suffix != ".ckpt"]
    assert {"run.json", "sweep_run.json", "config.yaml"} <= {p.name for p in written}
    assert not [p for p in written if b"s3cret" in p.read_bytes()]
    assert "s3cret" not in done.stdout + done.stderr
    assert not [r for r in runs if "s3cret" in str(r.data.params) + str(r.data.tags)]
    for run in runs:
        for artifact in every_artifact(client, run.info.run_id):
            local = Path(client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path / "back")))
            assert local.stat().st_size == artifact.file_size, artifact.path
    shutil.rmtree(tmp_path / "artifacts")  # the report reads the runs' records only, no file per run
    report.main(["--sweep", "sw", "--out", str(tmp_path / "report")])
    text = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "2 finished runs" in text and "- gru: " in text  # confusion pairs, from the runs' tags
