"""A run folder's record (`run.json`) and a sweep folder's (`sweep_run.json`): which MLflow run the
folder belongs to and which process runs it, so a restart continues that run and a run whose process
is gone is told from one still training.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from filelock import FileLock, Timeout

from signglove_exp.tracking.store import redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

RUN_RECORD = "run.json"  # in a run folder: the MLflow run it belongs to, and the process running it
SWEEP_RECORD = "sweep_run.json"  # in a sweep folder: the parent run, its sweep tag, store and process
RUN_LOCK = "run.lock"  # in a run folder: held by the process running it, released when it ends or dies


@contextmanager
def claimed(out_dir: Path) -> Iterator[None]:
    """The run folder for this process alone while the run lasts: a second process (a second
    `resume=` of the same run, a second run given the same folder) is refused, never interleaved.
    The OS releases the lock when the process dies, so a killed run can be resumed at once."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out_dir / RUN_LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        record = read_run_record(out_dir) or {}
        who = f"run {record['run_id']}, process {record.get('pid')}" if "run_id" in record else "a run"
        raise ValueError(
            f"paths.output_dir {out_dir} is in use by {who} that is still running: wait for it to end, "
            "or give this run a folder of its own"
        ) from None
    try:
        yield
    finally:
        lock.release()


def write_record(path: Path, **fields) -> None:
    """A run's (or sweep's) record in its folder, naming this process (pid and start time, since the
    OS reuses pids) so a later start can tell that a run left RUNNING has no process any more."""
    if "tracking_uri" in fields:  # a record is a file anyone may read: no credentials in it
        fields["tracking_uri"] = redact(fields["tracking_uri"])
    record = {**fields, "host": socket.gethostname(), "pid": os.getpid(), "started": process_started()}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_record(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_run_record(out_dir: Path) -> dict | None:
    return read_record(Path(out_dir) / RUN_RECORD)


def recorded_store(record: dict, current: str) -> str:
    """The store a record names, reached through `current` when that is the same store with the
    credentials the record leaves out."""
    return current if redact(current) == record["tracking_uri"] else record["tracking_uri"]


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
