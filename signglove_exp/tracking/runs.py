"""What goes into runs besides the training curves: params, files, the dataset, the confusion matrix,
evaluation and parent runs, tags, and the run's link in the UI.

The curves go through `tracking.logger`, the run folder's record is `tracking.records`, the pyfunc
model is `tracking.packaging`.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from signglove_exp.tracking.store import (
    ensure_experiment,
    experiment_id,
    git_commit,
    redact,
    resolve_uri,
)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
CONFUSION_TAG = "signglove.test_confusion"  # the test confusion matrix, so reports need no download per run
MAX_TAG_CHARS = 8000  # MLflow's limit on a tag value


def flatten(tree, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"model.name": "gru", "data.seq_len": "87", ...}."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: str(tree)}


NOT_PARAMS = (
    "paths.",
    "tracking.uri",  # it may carry a password; the run's store is where the run is
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
    params["overrides"] = " ".join(k + eq + redact(v) for k, eq, v in (o.partition("=") for o in overrides))
    params["overrides"] = params["overrides"] or "(none)"
    items = [Param(k, v[:MAX_PARAM_CHARS]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def log_extra_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Params decided at a run's end (a choice made on validation)."""
    client.log_batch(run_id, params=[Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()])


def log_files(client: MlflowClient, run_id: str, files: list[Path], artifact_path: str | None = None) -> None:
    for f in files:
        client.log_artifact(run_id, str(f), artifact_path)


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
    tags: dict[str, str] | None = None,
) -> str:
    """An evaluation (an import, a calibration) as a run of its own, tagged with the training run it
    evaluates (and `tags`); `checkpoint` goes under checkpoints/, where `recognize RUN_ID` finds a model."""
    client, exp_id = experiment_id(resolve_uri(uri), experiment)
    tags = {"signglove.kind": kind, "mlflow.source.git.commit": git_commit(), **(tags or {})}
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
    base = redact(uri).rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"
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
