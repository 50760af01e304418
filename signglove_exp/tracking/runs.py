"""Writing runs: the Lightning logger (new or continued run), params, files, evaluation runs, pyfunc models.

Every training metric reaches MLflow through the `RunLogger` made in `make_logger`; files go through
`log_files`. A run folder holds `run.json`, naming its MLflow run, so a restarted job continues that
run instead of opening another.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import warnings
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # start_run reads the global URI
from mlflow.types import ColSpec
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger
from requests.exceptions import RequestException

from signglove_exp.card import CARD_KEY, ModelCard
from signglove_exp.tracking.store import (
    ensure_experiment,
    experiment_id,
    git_commit,
    resolve_uri,
    tracking_uri,
)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
LOCAL_METRICS = "metrics.jsonl"  # in a run folder: every metric logged, one JSON object a line
RUN_RECORD = "run.json"  # in a run folder: the MLflow run it belongs to, and the process running it
CONFUSION_TAG = "signglove.test_confusion"  # the test confusion matrix, so reports need no download per run
MAX_TAG_CHARS = 8000  # MLflow's limit on a tag value
SWEEP_RECORD = "sweep_run.json"  # in a sweep folder: the parent run, its sweep tag, store and process
PYFUNC_REQUIREMENTS = ["torch==2.13.0", "pytorch-lightning>=2.6,<2.7", "numpy", "scikit-learn", "pandas"]


def flatten(tree, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"model.name": "gru", "data.seq_len": "87", ...}."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: str(tree)}


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
                f"\nThe tracking store {self._tracking_uri} stopped answering while logging {what} "
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
    """A logger on a new run with `tags`, or on the existing run `run_id`, set RUNNING again."""
    bound_retries(cfg)
    try:
        client, experiment = ensure_experiment(cfg)
    except MlflowException as error:
        raise ValueError(
            f"tracking.uri {tracking_uri(cfg)}: the store does not answer "
            f"({str(error).splitlines()[0][:200]})"
        ) from None
    close_stale_runs(client, experiment)
    logged_through = {}
    if run_id:
        client.update_run(run_id, "RUNNING")
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


def write_record(path: Path, **fields) -> None:
    """A run's (or sweep's) record in its folder, naming this process so a later start can tell that
    a run left RUNNING has no process any more."""
    record = {**fields, "host": socket.gethostname(), "pid": os.getpid()}
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
        if not record or record.get("host") != socket.gethostname() or _alive(record.get("pid")):
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


def _alive(pid: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError):
        return True
    return True


NOT_PARAMS = (
    "paths.",
    "data.root",
    "data.archive",
    "data.unpack_to",
    "data.cache_dir",
)  # places, not settings


def log_params(client: MlflowClient, run_id: str, cfg: DictConfig, overrides: list[str], facts: dict) -> None:
    """The user's settings as dotted params (no `_target_`/`_partial_`, no folders: the run folder is
    a tag, the data a dataset input), the command-line overrides, and `facts` such as sizes.

    Through the client, not `log_hyperparams`, which cuts values at 250 characters.
    """
    params = {
        k: v
        for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()
        if not k.startswith(NOT_PARAMS) and not k.endswith(("._target_", "._partial_", ".dirpath"))
    }
    params.update({k: str(v) for k, v in facts.items()})
    params["overrides"] = " ".join(overrides) or "(none)"
    items = [Param(k, v[:MAX_PARAM_CHARS]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def log_files(client: MlflowClient, run_id: str, files: list[Path], artifact_path: str | None = None) -> None:
    for f in files:
        client.log_artifact(run_id, str(f), artifact_path)


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


def log_evaluation(
    uri: str | None,
    experiment: str,
    source_run: str | None,
    name: str,
    params: dict,
    metrics: dict,
    files: list[Path],
    kind: str = "evaluation",
    checkpoint: Path | None = None,
) -> str:
    """An evaluation (an import, a calibration) as a run of its own, tagged with the training run it
    evaluates; `checkpoint` goes under checkpoints/, where `recognize RUN_ID` finds a model."""
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
    if checkpoint:
        client.log_artifact(run_id, str(checkpoint), "checkpoints")
    client.set_terminated(run_id)
    return run_id


def system_monitor(uri: str, run_id: str, every_s: float):
    """MLflow's sampler of CPU, memory and disk use, logging system/* metrics to the run until finished."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=every_s, tracking_uri=uri)
    monitor.start()
    return monitor


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """Where the run opens in the MLflow UI: the server itself, or `make ui` for a local store."""
    base = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"
    hint = "" if uri.startswith("http") else "  (make ui, or: mlflow ui --backend-store-uri " + uri + ")"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{hint}"


def log_dataset(
    client: MlflowClient, run_id: str, name: str, fingerprint: str, root: Path, sizes: dict
) -> None:
    """The episodes as an MLflow dataset input (name, digest = data fingerprint, source, part sizes), so
    the run table's Dataset column and the run page show what a run was trained on."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source = json.dumps({"uri": str(Path(root).resolve())})
    entity = Dataset(name, fingerprint[:36], "local", source, profile=json.dumps(sizes))
    client.log_inputs(run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", "training")])])


def log_report(uri: str | None, run_id: str, files: list[Path]) -> None:
    client = MlflowClient(resolve_uri(uri))
    for f in files:
        client.log_artifact(run_id, str(f), "report")


logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)  # its note on validating the input example


def log_pyfunc(uri: str, run_id: str, checkpoint: Path, example_csv: Path, card: ModelCard) -> str:
    """Log the checkpoint as an MLflow pyfunc model (scaler inside) with a signature and an example.

    Column types follow a real episode file (flex sensors are integer ADC readings). The card rides in
    the model's metadata; the package's code rides along without its fonts (figures are not served).
    """
    example = pd.read_csv(example_csv)[card.channels]
    with warnings.catch_warnings():  # the integer columns are meant, so MLflow's hint about them is noise
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer_signature(
            example,
            pd.DataFrame({"episode": ["0"], "jamo": ["ㄱ"], "confidence": [1.0], "top3": ["ㄱ:1.000"]}),
        )
        signature.inputs.inputs.append(ColSpec("string", "episode", required=False))
        package = Path(__file__).resolve().parents[1]
        with _use_tracking_uri(uri), tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
            code = Path(tmp) / package.name
            shutil.copytree(package, code, ignore=shutil.ignore_patterns("fonts", "__pycache__"))
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(package / "inference" / "pyfunc_model.py"),
                artifacts={"checkpoint": str(checkpoint)},
                code_paths=[str(code)],
                signature=signature,
                input_example=example,
                pip_requirements=PYFUNC_REQUIREMENTS,
                metadata={CARD_KEY: card.to_dict()},
            )
    return info.model_uri


def log_confusion(client: MlflowClient, run_id: str, classes: list[str], counts) -> None:
    """The test confusion matrix as a compact tag (rows true, columns predicted), when it fits."""
    value = json.dumps(
        {"classes": classes, "counts": counts.tolist()}, ensure_ascii=False, separators=(",", ":")
    )
    if len(value) <= MAX_TAG_CHARS:
        client.set_tag(run_id, CONFUSION_TAG, value)


def open_parent(cfg: DictConfig, name: str, tags: dict[str, str]) -> str:
    """A parent run (a sweep's, a search's), under which child runs are folded in the MLflow UI."""
    client, experiment = ensure_experiment(cfg)
    run = client.create_run(
        experiment, run_name=name, tags={"mlflow.source.git.commit": git_commit(), **tags}
    )
    return run.info.run_id


def close_parent(uri: str, run_id: str, params: dict, metrics: dict, files: list[Path], status: str) -> None:
    """Params, metrics and files (under `report/`) of a parent run, then its end."""
    client = MlflowClient(uri)
    client.log_batch(run_id, params=[Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()])
    for k, v in metrics.items():
        client.log_metric(run_id, k, v)
    for f in files:
        client.log_artifact(run_id, str(f), "report")
    client.set_terminated(run_id, status)


def tag_run(uri: str, run_id: str, tags: dict[str, str], status: str | None = None) -> None:
    """Tags on a run, and a new status (RUNNING again, KILLED) when given."""
    client = MlflowClient(uri)
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    if status:
        client.update_run(run_id, status)
