"""Everything MLflow: where the store is, what a run logs, and a sweep's parent run.

Every metric reaches MLflow through the Lightning `MLFlowLogger` made in `make_logger`; files go
through `log_files`. A multirun gets one parent run (opened by `SweepTracking` before any job
starts, which also creates the store once so parallel jobs never race on its migrations).
"""

from __future__ import annotations

import csv
import os
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import pandas as pd
from hydra.experimental.callback import Callback
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger

from signglove_exp import PROJECT_DIR, report

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per download is noise
DEFAULT_OUTPUTS = PROJECT_DIR / "outputs"
PARENT_ENV = "SIGNGLOVE_PARENT_RUN_ID"  # set by SweepTracking for the jobs of a multirun
SWEEP_ENV = "SIGNGLOVE_SWEEP"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
PYFUNC_REQUIREMENTS = ["torch==2.13.0", "pytorch-lightning>=2.6,<2.7", "numpy", "scikit-learn", "pandas"]


def resolve_uri(uri: str | None, outputs: str | Path = DEFAULT_OUTPUTS) -> str:
    """The given URI, else $MLFLOW_TRACKING_URI, else an SQLite store under `outputs`."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    outputs = Path(outputs).resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{outputs / 'mlflow.db'}"


def tracking_uri(cfg: DictConfig) -> str:
    return resolve_uri(cfg.tracking.uri, cfg.paths.outputs)


def experiment_id(uri: str, name: str) -> tuple[MlflowClient, str]:
    """Create the store and the experiment once. An SQLite store keeps its files in mlartifacts/
    beside the database (MLflow's own default, ./mlruns, would land wherever the command ran)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        try:
            return client, client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by a parallel job
            exp = client.get_experiment_by_name(name)
    return client, exp.experiment_id


def ensure_experiment(cfg: DictConfig) -> tuple[MlflowClient, str]:
    return experiment_id(tracking_uri(cfg), cfg.tracking.experiment)


def flatten(tree, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"model.name": "gru", "data.seq_len": "87", ...}."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: str(tree)}


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def make_logger(cfg: DictConfig, tags: dict[str, str]) -> MLFlowLogger:
    client, _ = ensure_experiment(cfg)
    tags = {"mlflow.source.git.commit": git_commit(), **tags}
    if os.environ.get(PARENT_ENV):
        tags.update({"mlflow.parentRunId": os.environ[PARENT_ENV], "sweep": os.environ.get(SWEEP_ENV, "")})
    return MLFlowLogger(
        experiment_name=cfg.tracking.experiment,
        run_name=cfg.tracking.run_name,
        tracking_uri=tracking_uri(cfg),
        tags=tags,
    )


def log_params(logger: MLFlowLogger, cfg: DictConfig, overrides: list[str]) -> None:
    """Every resolved config value as a dotted param, and the command-line overrides.

    Through the client, not `log_hyperparams`, which cuts values at 250 characters.
    """
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    params["overrides"] = " ".join(overrides) or "(none)"
    items = [Param(k, v[:MAX_PARAM_CHARS]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        logger.experiment.log_batch(logger.run_id, params=items[i : i + 100])


def log_files(logger: MLFlowLogger, files: list[Path], artifact_path: str | None = None) -> None:
    for f in files:
        logger.experiment.log_artifact(logger.run_id, str(f), artifact_path)


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


def _confusion(client: MlflowClient, run_id: str) -> tuple[list[str], np.ndarray] | None:
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
        confusion = _confusion(client, r.info.run_id)
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
    """The checkpoint a training run logged, fetched once into outputs/models/<run_id>/.

    `run_id` may also be a model URI (`runs:/<id>/model`, `models:/<name>/<version>`): the checkpoint
    inside that pyfunc model is used.
    """
    if ":/" in run_id:
        local = mlflow.artifacts.download_artifacts(artifact_uri=run_id, tracking_uri=resolve_uri(uri))
        found = sorted(Path(local).rglob("*.ckpt"))
        if not found:
            raise ValueError(f"{run_id} holds no checkpoint: not a model logged by signglove-exp")
        return found[0]
    client = MlflowClient(resolve_uri(uri))
    ckpts = [a.path for a in client.list_artifacts(run_id, "checkpoints") if a.path.endswith(".ckpt")]
    if not ckpts:
        raise ValueError(f"run {run_id} logged no checkpoint under checkpoints/")
    dest = Path(dest or DEFAULT_OUTPUTS / "models" / run_id)
    cached = dest / Path(ckpts[0]).name
    if cached.is_file():
        return cached
    dest.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, ckpts[0], str(dest)))


def log_evaluation(
    uri: str | None,
    experiment: str,
    source_run: str | None,
    name: str,
    params: dict,
    metrics: dict,
    files: list[Path],
    kind: str = "evaluation",
) -> str:
    """An evaluation (or an import) as a run of its own, tagged with the training run it evaluates."""
    client, exp_id = experiment_id(resolve_uri(uri), experiment)
    tags = {"signglove.kind": kind, "mlflow.source.git.commit": git_commit()}
    if source_run:
        tags["signglove.source_run"] = source_run
    run = client.create_run(exp_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()])
    for k, v in metrics.items():
        client.log_metric(run_id, k, v)
    for f in files:
        client.log_artifact(run_id, str(f))
    client.set_terminated(run_id)
    return run_id


def log_report(selection: RunSelection, run_id: str, files: list[Path]) -> None:
    client = MlflowClient(resolve_uri(selection.uri))
    for f in files:
        client.log_artifact(run_id, str(f), "report")


class SweepTracking(Callback):
    """A multirun's parent run: opened before the jobs, summarised and closed after them, or by
    `close_open_sweep` when the multirun is stopped or breaks."""

    open: ClassVar[SweepTracking | None] = None  # the sweep this process is running

    def __init__(self) -> None:
        self.client: MlflowClient | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.client, self.experiment_id = ensure_experiment(config)
        self.sweep_dir = Path(config.hydra.sweep.dir)
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"sweep-{self.sweep_dir.name}",
            tags={"sweep": self.sweep_dir.name, "mlflow.source.git.commit": git_commit()},
        )
        self.parent = run.info.run_id
        self.selection = RunSelection(
            config.tracking.experiment, parent=self.parent, uri=tracking_uri(config)
        )
        os.environ[PARENT_ENV], os.environ[SWEEP_ENV] = self.parent, self.sweep_dir.name
        self.started = time.time()
        SweepTracking.open = self

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.client is not None:
            self.close()

    def close(self, stopped: str | None = None) -> None:
        """Summary, report over the finished runs, parent run ended. `stopped` (KILLED or FAILED) says
        the jobs did not all return; runs a killed worker left RUNNING get that status too."""
        SweepTracking.open = None
        for key in (PARENT_ENV, SWEEP_ENV):
            os.environ.pop(key, None)
        try:
            runs, _ = fetch_runs(self.selection)
        except ValueError:
            runs = []
        for r in runs:
            if stopped and r["status"] == "RUNNING":
                self.client.set_terminated(r["run_id"], stopped)
                r["status"] = stopped
        name = self.sweep_dir.name
        table = report.sweep_table(runs) if runs else "(no runs)"
        print(f"\nSweep {name}: {len(runs)} runs, parent run {self.parent}\n\n{table}\n")
        summary = self.sweep_dir / "sweep_summary.md"
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(table + "\n", encoding="utf-8")
        self.client.log_artifact(self.parent, str(summary))
        if any(r["status"] == "FINISHED" for r in runs):
            files = report.build_report(runs, self.sweep_dir / "report", f"Sweep {name}")
            log_report(self.selection, self.parent, files)
            print(f"Comparison report: {files[0]}")
        self.client.log_metric(self.parent, "time/sweep_s", time.time() - self.started)
        failed = any(r["status"] != "FINISHED" for r in runs)
        self.client.set_terminated(self.parent, stopped or ("FAILED" if failed else "FINISHED"))


def close_open_sweep(stopped: str) -> None:
    """Ends the multirun this process is running, if any, after Ctrl-C (KILLED) or an error (FAILED),
    so that no run is left RUNNING and the finished ones still get their report."""
    if SweepTracking.open is not None:
        SweepTracking.open.close(stopped)


def mark_stopped(logger: MLFlowLogger, error: BaseException) -> None:
    """A run that broke (FAILED) or was stopped (KILLED: Ctrl-C) stays visible with whatever it logged."""
    stopped = isinstance(error, KeyboardInterrupt | SystemExit)  # Lightning turns Ctrl-C into SystemExit
    logger.experiment.set_terminated(logger.run_id, "KILLED" if stopped else "FAILED")


def run_metrics(run_id: str, uri: str | None = None) -> dict[str, float]:
    return MlflowClient(resolve_uri(uri)).get_run(run_id).data.metrics


def log_pyfunc(cfg: DictConfig, run_id: str, checkpoint: Path, example_csv: Path, channels: list[str]) -> str:
    """Log the checkpoint as an MLflow pyfunc model (scaler inside) with a signature and an example.

    Column types follow a real episode file (flex sensors are integer ADC readings).
    """
    example = pd.read_csv(example_csv)[channels]
    with warnings.catch_warnings():  # the integer columns are meant, so MLflow's hint about them is noise
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer_signature(
            example,
            pd.DataFrame({"episode": ["0"], "jamo": ["ㄱ"], "confidence": [1.0], "top3": ["ㄱ:1.000"]}),
        )
        signature.inputs.inputs.append(ColSpec("string", "episode", required=False))
        mlflow.set_tracking_uri(tracking_uri(cfg))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={"checkpoint": str(checkpoint)},
                code_paths=[str(Path(__file__).parent)],
                signature=signature,
                input_example=example,
                pip_requirements=PYFUNC_REQUIREMENTS,
            )
    return info.model_uri
