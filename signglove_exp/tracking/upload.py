"""A run kept in its folder, sent to its tracking store: after the store went away during training.

What reaches the store is what `train` would have sent: the metrics of metrics.jsonl that the run
lacks, the run's files, its best checkpoint and pyfunc model, and its final status.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from signglove_exp.card import read_checkpoint
from signglove_exp.tracking.logger import LOCAL_METRICS
from signglove_exp.tracking.packaging import log_pyfunc
from signglove_exp.tracking.records import RUN_RECORD, read_run_record, recorded_store, write_record
from signglove_exp.tracking.runs import log_files

RUN_FILES = (".csv", ".tsv", ".json", ".yaml", ".png", ".txt")  # a run folder's files that MLflow holds


def upload_run(folder: Path, uri: str | None = None) -> str:
    """Send what the store lacks of the run in `folder`; returns the run's final status."""
    record = read_run_record(folder)
    if record is None:
        raise ValueError(f"{folder}: no {RUN_RECORD}, not a run folder")
    uri = uri or recorded_store(record, os.environ.get("MLFLOW_TRACKING_URI") or record["tracking_uri"])
    client, run_id = MlflowClient(uri), record["run_id"]
    client.get_run(run_id)
    points = [json.loads(line) for line in (folder / LOCAL_METRICS).read_text(encoding="utf-8").splitlines()]
    held = {k: {m.step for m in client.get_metric_history(run_id, k)} for k in {p["key"] for p in points}}
    now = int(time.time() * 1000)
    missing = [
        Metric(p["key"], p["value"], now, p["step"]) for p in points if p["step"] not in held[p["key"]]
    ]
    for i in range(0, len(missing), 1000):
        client.log_batch(run_id, metrics=missing[i : i + 1000])
    files = sorted(f for f in folder.iterdir() if f.suffix in RUN_FILES and f.name != RUN_RECORD)
    log_files(client, run_id, files)
    best = sorted(f for f in (folder / "checkpoints").glob("*.ckpt") if f.name != "last.ckpt")
    cfg = OmegaConf.load(folder / "config.yaml")
    if best:
        log_files(client, run_id, best[-1:], "checkpoints")
        if cfg.tracking.log_model and not any(client.get_run(run_id).outputs.model_outputs):
            log_pyfunc(uri, run_id, best[-1], example_episode(folder, cfg), read_checkpoint(best[-1])[0])
    status = record.get("pending_upload") or "FINISHED"
    client.set_terminated(run_id, status)
    write_record(folder / RUN_RECORD, run_id=run_id, tracking_uri=uri)
    print(
        f"Run {run_id} uploaded to {uri}: {len(missing)} metric values, {len(files) + len(best[-1:])} files"
    )
    return status


def example_episode(folder: Path, cfg) -> Path:
    """A test episode of the run (its manifest names them), as the pyfunc model's input example."""
    with open(folder / "split_manifest.csv", encoding="utf-8") as f:
        path = next(r["path"] for r in csv.DictReader(f) if r["part"] == "test")
    return Path(cfg.data.root) / path
