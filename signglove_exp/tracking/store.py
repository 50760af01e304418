"""Where runs are tracked: the store's URI, the experiment (created once), the code's git commit."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from signglove_exp import default_outputs

EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI's model-training views


def resolve_uri(uri: str | None, outputs: str | Path | None = None) -> str:
    """The given URI, else $MLFLOW_TRACKING_URI, else an SQLite store under `outputs`."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    outputs = Path(outputs or default_outputs()).resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{outputs / 'mlflow.db'}"


def tracking_uri(cfg) -> str:
    return resolve_uri(cfg.tracking.uri, cfg.paths.outputs)


def redact(uri: str) -> str:
    """A URI as it may be printed or stored: without the user and password it may carry."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=host))


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to `uri`, for the calls that read only that one (a model URI's
    download, `start_run`), then put back as it was. MLflow's own `_use_tracking_uri` deletes
    $MLFLOW_TRACKING_URI on the way out when no global URI had been set, and every later run of the
    process then went to ./outputs/mlflow.db instead of the store the user named."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous, variable = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if variable is not None:
            os.environ["MLFLOW_TRACKING_URI"] = variable


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Processes that open a new SQLite store at once race in its schema migrations (MLflow's, Optuna's)
    and crash; here they take turns (a lock file beside the database). Other stores need no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock"):
        yield


def experiment_id(uri: str, name: str) -> tuple[MlflowClient, str]:
    """Create the store and the experiment once. An SQLite store keeps its files in mlartifacts/
    beside the database (MLflow's own default, ./mlruns, would land wherever the command ran)."""
    with store_lock(uri):
        client = MlflowClient(uri)  # opening the client creates (and migrates) a new store
        exp = client.get_experiment_by_name(name)
        if exp is None:
            location = None
            if uri.startswith("sqlite:///"):
                location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
            try:
                return client, client.create_experiment(name, location, tags=EXPERIMENT_KIND)
            except MlflowException:  # created meanwhile by a process on another machine
                exp = client.get_experiment_by_name(name)
        if "mlflow.experimentKind" not in exp.tags:  # a store made by an earlier release
            client.set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
    return client, exp.experiment_id


def ensure_experiment(cfg) -> tuple[MlflowClient, str]:
    return experiment_id(tracking_uri(cfg), cfg.tracking.experiment)


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
