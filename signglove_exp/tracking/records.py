"""A run folder's record (`run.json`) and a sweep folder's (`sweep_run.json`): which MLflow run the
folder belongs to and which process runs it, so a restart continues that run and a run whose process
is gone is told from one still training.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

RUN_RECORD = "run.json"  # in a run folder: the MLflow run it belongs to, and the process running it
SWEEP_RECORD = "sweep_run.json"  # in a sweep folder: the parent run, its sweep tag, store and process


def write_record(path: Path, **fields) -> None:
    """A run's (or sweep's) record in its folder, naming this process (pid and start time, since the
    OS reuses pids) so a later start can tell that a run left RUNNING has no process any more."""
    record = {**fields, "host": socket.gethostname(), "pid": os.getpid(), "started": process_started()}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_record(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_run_record(out_dir: Path) -> dict | None:
    return read_record(Path(out_dir) / RUN_RECORD)


def close_stale_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Runs left RUNNING by a process of this machine that no longer exists (SIGKILL, a power cut)
    are marked KILLED, with a line saying how to continue each; returns their ids."""
    closed = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        folder = run.data.tags.get("signglove.run_dir")
        records = [read_record(Path(folder) / n) for n in (RUN_RECORD, SWEEP_RECORD)] if folder else []
        record = next((r for r in records if r and r["run_id"] == run.info.run_id), None)
        if not record or record.get("host") != socket.gethostname() or alive(record):
            continue
        if record.get("pending_upload"):
            print(f"Run {run.info.run_id} ended while its store was away: upload it with the upload command")
            continue
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
        print(
            f"Run {run.info.run_id} was left RUNNING by a process that is gone: marked KILLED "
            f"(continue it with resume={folder})"
        )
    return closed


def process_started(pid: int | None = None) -> float | None:
    """When the process began (seconds since the epoch), or None if there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def alive(record: dict) -> bool:
    """Whether the process a record names still runs: the same pid started at the same time. A record
    without a start time (an earlier release) trusts the pid alone."""
    pid = record.get("pid")
    if not isinstance(pid, int) or not psutil.pid_exists(pid):
        return False
    started = record.get("started")
    now = process_started(pid)
    return started is None or now is None or abs(now - started) < 0.1
