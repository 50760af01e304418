"""Reading runs back: which runs a report covers, their metrics and confusion matrices, their models."""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow.artifacts
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from signglove_exp import default_outputs
from signglove_exp.tracking.runs import CONFUSION_TAG
from signglove_exp.tracking.store import global_tracking_uri, resolve_uri


@dataclass
class RunSelection:
    """Which runs a report covers: one or more sweeps, a parent run, a search filter, or a whole
    experiment. Several sweeps make one report, e.g. a sweep stopped early and the one that ran its
    remaining jobs."""

    experiment: str = "signglove"
    sweeps: tuple[str, ...] = ()
    parent: str | None = None
    filter: str | None = None
    uri: str | None = None

    def search_filters(self) -> list[str]:
        if self.sweeps:
            return [f"tags.sweep = '{s}'" for s in self.sweeps]
        if self.parent:
            return [f"tags.`mlflow.parentRunId` = '{self.parent}'"]
        return [self.filter or ""]

    def describe(self) -> str:
        return " or ".join(f for f in self.search_filters() if f) or f"experiment {self.experiment}"

    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.describe())[:80]


def _confusion(client: MlflowClient, run_id: str, tags: dict) -> tuple[list[str], np.ndarray] | None:
    """From the run's tag (one query for all runs), else its confusion_matrix.csv (older runs)."""
    if CONFUSION_TAG in tags:
        matrix = json.loads(tags[CONFUSION_TAG])
        return matrix["classes"], np.array(matrix["counts"])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "confusion_matrix.csv", tmp)
        except (MlflowException, OSError):
            return None
        with open(path, encoding="utf-8") as f:
            rows = list(csv.reader(f))
    return rows[0][1:], np.array([[int(v) for v in r[1:]] for r in rows[1:]])


def fetch_runs(selection: RunSelection) -> tuple[list[dict], list[str]]:
    """Selected runs as plain dicts (params, metrics, tags, classes, confusion), oldest first, and the
    parent run ids of the selected sweeps (the report is logged to each)."""
    client = MlflowClient(resolve_uri(selection.uri))
    exp = client.get_experiment_by_name(selection.experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {selection.experiment!r} at {resolve_uri(selection.uri)}")
    found = [
        r
        for f in selection.search_filters()
        for r in client.search_runs([exp.experiment_id], f, max_results=50_000)
    ]
    found.sort(key=lambda r: r.info.start_time)
    parents = [selection.parent] if selection.parent else []
    if selection.sweeps:
        parents = [r.info.run_id for r in found if "mlflow.parentRunId" not in r.data.tags]
    runs = []
    for r in found:
        if "mlflow.parentRunId" not in r.data.tags and "test/acc" not in r.data.metrics:
            continue  # a sweep's own parent run
        confusion = _confusion(client, r.info.run_id, r.data.tags)
        runs.append(
            {
                "run_id": r.info.run_id,
                "status": r.info.status,
                "params": r.data.params,
                "metrics": r.data.metrics,
                "tags": r.data.tags,
                "classes": confusion[0] if confusion else [],
                "confusion": confusion[1] if confusion else None,
            }
        )
    if not runs:
        raise ValueError(f"no runs match {selection.describe()} in experiment {selection.experiment!r}")
    return runs, parents


def download_checkpoint(run_id: str, uri: str | None = None, dest: str | Path | None = None) -> Path:
    """The checkpoint a training run logged, fetched once into outputs/models/<run_id>/ (or `dest`).

    A cached file is reused only if its size is the artifact's: a truncated one is fetched again.

    `run_id` may also be a model URI (`runs:/<id>/model`, `models:/<name>/<version>`): the checkpoint
    inside that pyfunc model is used.
    """
    if ":/" in run_id:
        # MLflow 3 finds the logged model behind runs:/<id>/model through its global tracking URI only
        with global_tracking_uri(resolve_uri(uri)):
            local = mlflow.artifacts.download_artifacts(artifact_uri=run_id, tracking_uri=resolve_uri(uri))
        found = sorted(Path(local).rglob("*.ckpt"))
        if not found:
            raise ValueError(f"{run_id} holds no checkpoint: not a model logged by signglove-exp")
        return found[0]
    client = MlflowClient(resolve_uri(uri))
    ckpts = [a for a in client.list_artifacts(run_id, "checkpoints") if a.path.endswith(".ckpt")]
    if not ckpts:
        raise ValueError(f"run {run_id} logged no checkpoint under checkpoints/")
    dest = Path(dest or default_outputs() / "models" / run_id)
    cached = dest / Path(ckpts[0].path).name
    if cached.is_file() and ckpts[0].file_size in (None, cached.stat().st_size):
        return cached  # a store that lists no size cannot be checked against
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        # renamed in one step within the folder: a killed download never leaves a truncated file as `cached`
        Path(client.download_artifacts(run_id, ckpts[0].path, tmp)).replace(cached)
    return cached


def run_metrics(run_id: str, uri: str | None = None) -> dict[str, float]:
    return MlflowClient(resolve_uri(uri)).get_run(run_id).data.metrics


def run_status(run_id: str, uri: str | None = None) -> str:
    return MlflowClient(resolve_uri(uri)).get_run(run_id).info.status
