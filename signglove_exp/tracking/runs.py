"""Writing runs: the Lightning logger (new or continued run), params, files, evaluation runs, pyfunc models.

Every training metric reaches MLflow through the `RunLogger` made in `make_logger`; files go through
`log_files`. A run folder holds `run.json`, naming its MLflow run, so a restarted job continues that
run instead of opening another.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.entities import Param
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger

from signglove_exp.card import CARD_KEY, ModelCard
from signglove_exp.tracking.store import (
    ensure_experiment,
    experiment_id,
    git_commit,
    resolve_uri,
    tracking_uri,
)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
RUN_RECORD = "run.json"  # in a run folder: the MLflow run it belongs to
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
    """Lightning's MLflow logger that can continue a run.

    Steps the run already holds are not logged again (an epoch a kill cut short is trained again,
    identically, after a resume), and the run is ended by `train`, after its test metrics and files
    are in, not by Lightning at the end of fitting.
    """

    def __init__(self, logged_through: dict[str, int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.logged_through = logged_through or {}

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if step is not None:
            metrics = {k: v for k, v in metrics.items() if step > self.logged_through.get(k, -1)}
        if metrics:
            super().log_metrics(metrics, step)

    def finalize(self, status: str = "success") -> None:
        if status != "success":
            super().finalize(status)


def make_logger(cfg: DictConfig, tags: dict[str, str], run_id: str | None = None) -> RunLogger:
    """A logger on a new run with `tags`, or on the existing run `run_id`, set RUNNING again."""
    client, _ = ensure_experiment(cfg)
    logged_through = {}
    if run_id:
        client.update_run(run_id, "RUNNING")
        for key in client.get_run(run_id).data.metrics:
            logged_through[key] = max(m.step for m in client.get_metric_history(run_id, key))
    return RunLogger(
        logged_through,
        experiment_name=cfg.tracking.experiment,
        run_name=cfg.tracking.run_name,
        tracking_uri=tracking_uri(cfg),
        tags={"mlflow.source.git.commit": git_commit(), **tags},
        run_id=run_id,
    )


def write_run_record(out_dir: Path, logger: RunLogger) -> None:
    record = {"run_id": logger.run_id, "tracking_uri": logger._tracking_uri}
    (out_dir / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_run_record(out_dir: Path) -> dict | None:
    path = Path(out_dir) / RUN_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


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


def mark_stopped(logger: MLFlowLogger, error: BaseException) -> None:
    """A run that broke (FAILED) or was stopped (KILLED: Ctrl-C, SIGTERM) stays with whatever it logged."""
    stopped = isinstance(error, KeyboardInterrupt | SystemExit)  # Lightning turns Ctrl-C into SystemExit
    logger.experiment.set_terminated(logger.run_id, "KILLED" if stopped else "FAILED")


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


def log_report(uri: str | None, run_id: str, files: list[Path]) -> None:
    client = MlflowClient(resolve_uri(uri))
    for f in files:
        client.log_artifact(run_id, str(f), "report")


def log_pyfunc(cfg: DictConfig, run_id: str, checkpoint: Path, example_csv: Path, card: ModelCard) -> str:
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
        mlflow.set_tracking_uri(tracking_uri(cfg))
        package = Path(__file__).resolve().parents[1]
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
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
