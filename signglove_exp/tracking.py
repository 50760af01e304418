"""Everything MLflow: where the store is, what a run logs, and a sweep's parent run.

Every metric reaches MLflow through the Lightning `MLFlowLogger` made in `make_logger`; files go
through `log_files`. A multirun gets one parent run (opened by `SweepTracking` before any job
starts, which also creates the store once so parallel jobs never race on its migrations).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from mlflow.entities import Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger

from signglove_exp.report import sweep_table

PARENT_ENV = "SIGNGLOVE_PARENT_RUN_ID"  # set by SweepTracking for the jobs of a multirun
SWEEP_ENV = "SIGNGLOVE_SWEEP"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def tracking_uri(cfg: DictConfig) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else an SQLite store under paths.outputs."""
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    outputs = Path(cfg.paths.outputs).resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{outputs / 'mlflow.db'}"


def _artifact_location(cfg: DictConfig, uri: str) -> str | None:
    """Local stores keep files beside the database; a server decides for itself."""
    if uri.startswith(("sqlite:", "file:", "/")):
        return Path(cfg.paths.outputs, "mlartifacts").resolve().as_uri()
    return None


def ensure_experiment(cfg: DictConfig) -> tuple[MlflowClient, str]:
    uri = tracking_uri(cfg)
    client = MlflowClient(uri)
    name = cfg.tracking.experiment
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client, client.create_experiment(name, artifact_location=_artifact_location(cfg, uri))
        except MlflowException:  # created meanwhile by a parallel job
            exp = client.get_experiment_by_name(name)
    return client, exp.experiment_id


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


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[dict]:
    """The runs of one sweep as plain dicts of params, metrics and tags, oldest first."""
    runs = client.search_runs(
        [experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    return [
        {
            "run_id": r.info.run_id,
            "status": r.info.status,
            "params": r.data.params,
            "metrics": r.data.metrics,
            "tags": r.data.tags,
        }
        for r in runs
    ]


class SweepTracking(Callback):
    """A multirun's parent run: opened before the jobs, summarised and closed after them."""

    def __init__(self) -> None:
        self.client: MlflowClient | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.client, self.experiment_id = ensure_experiment(config)
        sweep = Path(config.hydra.sweep.dir).name
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"sweep-{sweep}",
            tags={"sweep": sweep, "mlflow.source.git.commit": git_commit()},
        )
        self.parent = run.info.run_id
        os.environ[PARENT_ENV], os.environ[SWEEP_ENV] = self.parent, sweep
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.client is None:
            return
        runs = child_runs(self.client, self.experiment_id, self.parent)
        table = sweep_table(runs)
        print(f"\nSweep {os.environ[SWEEP_ENV]}: {len(runs)} runs, parent run {self.parent}\n\n{table}\n")
        out = Path(config.hydra.sweep.dir) / "sweep_summary.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n", encoding="utf-8")
        self.client.log_artifact(self.parent, str(out))
        self.client.log_metric(self.parent, "time/sweep_s", time.time() - self.started)
        failed = any(r["status"] != "FINISHED" for r in runs)
        self.client.set_terminated(
            self.parent, RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
        )
        for key in (PARENT_ENV, SWEEP_ENV):
            os.environ.pop(key, None)
