"""Configs composed exactly as the CLI composes them, pointed at temporary stores."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from signglove_exp.data import ensure_unpacked
from signglove_exp.training.cli import compose as compose_config


@pytest.fixture
def spawn():
    """Popen for a test: every process it starts (in a session of its own) is killed, with all its
    children, when the test ends, whether it passed or not."""
    started: list[subprocess.Popen] = []

    def start(*args, **kwargs) -> subprocess.Popen:
        started.append(subprocess.Popen(*args, start_new_session=True, **kwargs))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One parse of the bundled episodes per test session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    """compose(overrides) with outputs, the MLflow store and the run folder under tmp_path."""
    return lambda *overrides: compose_config(
        *store_overrides(tmp_path, cache_dir), f"paths.output_dir={tmp_path / 'run'}", *overrides
    )


@functools.cache
def episodes_root() -> Path:
    """The bundled episodes, unpacked once into the checkout's outputs/ and shared by every test."""
    return ensure_unpacked(compose_config().data)


def store_overrides(tmp_path: Path, cache_dir: Path) -> list[str]:
    return [
        f"data.root={episodes_root()}",
        f"paths.outputs={tmp_path / 'outputs'}",
        f"data.cache_dir={cache_dir}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "signglove_exp", *args]


def cli_env() -> dict[str, str]:
    """The environment minus a tracking URI of the machine's own, so runs land in the test's store."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m signglove_exp ARGS` in a fresh process, as a user types it."""
    proc = subprocess.run(
        cli_command(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory, cache_dir):
    """One real run from the command line: GRU, three epochs, a temporary SQLite store."""
    tmp = tmp_path_factory.mktemp("cli")
    overrides = [
        *store_overrides(tmp, cache_dir),
        "model=gru",
        "trainer=debug",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=10",
        "seed=7",
    ]
    proc = run_cli(*overrides, cwd=tmp)
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("signglove").experiment_id])
    return client, run, tmp, proc.stdout + proc.stderr


def run_sweep(tmp, cache_dir, *overrides, name="sw"):
    """A multirun from the command line into tmp/name (also its sweep tag); returns (client, runs, stdout)."""
    proc = run_cli(
        "-m",
        *store_overrides(tmp, cache_dir),
        "trainer=debug",
        *overrides,
        f"hydra.sweep.dir={tmp / name}",
        cwd=tmp,
    )
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("signglove").experiment_id])
    return client, runs, proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(spawn, root: Path, port: int) -> subprocess.Popen:
    mlflow = Path(sys.executable).with_name("mlflow")
    server = spawn(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}"]
        + ["--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
            time.sleep(0.3)


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)
