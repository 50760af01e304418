"""The Lightning logger of a run: a new or continued MLflow run that outlives its tracking server.

Every training metric reaches MLflow through the `RunLogger` made in `make_logger`, and is also kept
in the run folder's metrics.jsonl; `end_run` ends the run, or records its status for `upload` when
the store went away.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from mlflow.exceptions import MlflowException
from omegaconf import DictConfig
from pytorch_lightning.loggers import MLFlowLogger
from requests.exceptions import RequestException

from signglove_exp.tracking.records import RUN_RECORD, close_stale_runs, read_run_record, write_record
from signglove_exp.tracking.store import ensure_experiment, git_commit, redact, tracking_uri

LOCAL_METRICS = "metrics.jsonl"  # in a run folder: every metric logged, one JSON object a line


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger that can continue a run, and that outlives its tracking server.

    Steps the run already holds are not logged again (an epoch a kill cut short is trained again,
    identically, after a resume), and the run is ended by `train`, after its test metrics and files
    are in, never by Lightning. Every metric is also kept in the run folder's
    metrics.jsonl; when the store stops answering (after the bounded retries of `tracking.http_*`)
    the logger says so once and goes on locally: `python -m signglove_exp.upload RUN_FOLDER` sends
    the finished run when the store is back.
    """

    def __init__(self, logged_through: dict[str, int] | None = None, local_dir: Path | None = None, **kwargs):
        super().__init__(**kwargs)
        self.logged_through = logged_through or {}
        self.local_file = Path(local_dir) / LOCAL_METRICS if local_dir else None
        self.offline: str | None = None  # why the store is no longer used, once it failed

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if "epoch" in metrics:  # curves are per epoch: the epoch is the step, not a metric of its own
            metrics = dict(metrics)
            step = int(metrics.pop("epoch"))
        if step is not None:
            metrics = {k: v for k, v in metrics.items() if step > self.logged_through.get(k, -1)}
        if not metrics:
            return
        if self.local_file:
            with open(self.local_file, "a", encoding="utf-8") as f:
                for k, v in metrics.items():
                    f.write(json.dumps({"key": k, "value": float(v), "step": step or 0}) + "\n")
        self.send(lambda: super(RunLogger, self).log_metrics(metrics, step), "metrics")

    def send(self, call, what: str) -> None:
        """Run one call to the store unless it already failed; its first failure switches to local."""
        if self.offline:
            return
        try:
            call()
        except (MlflowException, RequestException, OSError) as error:  # the store, not our code, failed
            self.offline = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            folder = self.local_file.parent if self.local_file else "the run folder"
            print(
                f"\nThe tracking store {redact(self._tracking_uri)} stopped answering while logging {what} "
                f"({self.offline}). Training goes on; every metric, checkpoint and file stays in {folder}. "
                f"When the store is back: python -m signglove_exp.upload {folder}\n",
                file=sys.stderr,
                flush=True,
            )

    def finalize(self, status: str = "success") -> None:
        """Nothing: `train` ends the run (`end_run`). Lightning would mark an interrupted run FAILED
        here, and a worker killed right after would leave it so instead of KILLED."""


def bound_retries(cfg: DictConfig) -> None:
    """MLflow's HTTP client retries an unreachable server for minutes by default: bound it."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.tracking.http_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(cfg.tracking.http_timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # one paragraph says it all


def make_logger(
    cfg: DictConfig, tags: dict[str, str], run_id: str | None = None, local_dir: Path | None = None
) -> RunLogger:
    """A logger on a new run with `tags`, or on the existing run `run_id`, set RUNNING again with
    `tags` (its folder may have moved)."""
    bound_retries(cfg)
    try:
        client, experiment = ensure_experiment(cfg)
    except MlflowException as error:
        raise ValueError(
            f"tracking.uri {redact(tracking_uri(cfg))}: the store does not answer "
            f"({str(error).splitlines()[0][:200]})"
        ) from None
    close_stale_runs(client, experiment)
    logged_through = {}
    if run_id:
        client.update_run(run_id, "RUNNING")
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        for key in client.get_run(run_id).data.metrics:
            logged_through[key] = max(m.step for m in client.get_metric_history(run_id, key))
    return RunLogger(
        logged_through,
        local_dir,
        experiment_name=cfg.tracking.experiment,
        run_name=cfg.tracking.run_name,
        tracking_uri=tracking_uri(cfg),
        tags={"mlflow.source.git.commit": git_commit(), **tags},
        run_id=run_id,
    )


def end_run(logger: RunLogger, out_dir: Path, status: str, error: BaseException | None = None) -> None:
    """End the run with `status`; if the store is away, the run folder's record keeps the status for
    `upload`. A FAILED run keeps its error message as error.txt."""
    if error is not None and status == "FAILED":
        message = out_dir / "error.txt"
        message.write_text(f"{type(error).__name__}: {error}\n", encoding="utf-8")
        logger.send(lambda: logger.experiment.log_artifact(logger.run_id, str(message)), "files")
    logger.send(lambda: logger.experiment.set_terminated(logger.run_id, status), "the run's status")
    if logger.offline:
        record = read_run_record(out_dir)
        write_record(out_dir / RUN_RECORD, **{**record, "pending_upload": status})


def stopped_status(error: BaseException) -> str:
    """KILLED for Ctrl-C and SIGTERM (Lightning turns them into SystemExit), FAILED for a crash."""
    return "KILLED" if isinstance(error, KeyboardInterrupt | SystemExit) else "FAILED"
