"""Configs composed exactly as the CLI composes them, pointed at temporary stores; commands run as
a user types them, in this process unless the process itself is what a test is about."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import runpy
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from filelock import FileLock
from mlflow.tracking import MlflowClient

from signglove_exp.data import ensure_unpacked
from signglove_exp.training.cli import compose as compose_config


@pytest.fixture(autouse=True)
def isolated_environment():
    """A run in this process leaves process-wide state that a later test's subprocess would inherit:
    Lightning's MLflow logger sets MLflow's tracking URI, and MLflow exports it to the environment."""
    saved = dict(os.environ)
    yield
    import mlflow

    mlflow.set_tracking_uri(None)
    os.environ.clear()
    os.environ.update(saved)


def pytest_configure(config):
    """Under pytest-xdist two workers share the cores: each worker, and every process it starts, uses
    one thread for torch (`threads=1` in `store_overrides` for the runs) and OpenMP, since threads that
    spin on cores the other worker uses make both several times slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


# built once per module: minutes of training, or a server process
SHARED_MODULE_FIXTURES = ("small_sweep", "folder", "robust_run", "plain_server", "glove_server")


def pytest_itemcollected(item):
    """Tests reading one expensive module fixture run on one xdist worker (`--dist loadgroup`), which
    builds it once; every other test goes wherever a worker is free. (Marked as each test is collected,
    before xdist reads the groups.)"""
    for name in SHARED_MODULE_FIXTURES:
        if name in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{name}"))


def pytest_collection_modifyitems(items):
    """The long tests first (those that start processes, those of a shared module fixture), so the two
    xdist workers end together rather than one waiting alone on a long test handed out last."""
    long = {"spawn", *SHARED_MODULE_FIXTURES}
    items.sort(key=lambda item: not long & set(getattr(item, "fixturenames", ())))


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
    """One parse of the bundled episodes per test session (shared by the xdist workers)."""
    return Path(shared(tmp_path_factory, "cache", lambda folder: str(folder)))


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    """compose(overrides) with outputs, the MLflow store and the run folder under tmp_path."""
    return lambda *overrides: compose_config(
        *store_overrides(tmp_path, cache_dir), f"paths.output_dir={tmp_path / 'run'}", *overrides
    )


@functools.cache
def episodes_root() -> Path:
    """The bundled episodes, unpacked once into the checkout's outputs/ and shared by every test (and
    every xdist worker: one unpacks, the other waits)."""
    data_cfg = compose_config().data
    Path(data_cfg.unpack_to).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{data_cfg.unpack_to}.lock"):
        return ensure_unpacked(data_cfg)


@functools.cache
def empty_store() -> Path:
    """An MLflow SQLite store with its schema made and nothing in it, once per process."""
    db = Path(tempfile.mkdtemp(prefix="empty-store-")) / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # opening it runs the schema migrations
    return db


def store_overrides(tmp_path: Path, cache_dir: Path, new_store: bool = False) -> list[str]:
    """Settings that point a run at the bundled episodes and at a store and outputs in tmp_path. The
    store starts as a copy of `empty_store()` (migrating a new one costs a second per test), unless
    `new_store`, for tests about creating one."""
    if not new_store and not (tmp_path / "mlflow.db").exists():
        tmp_path.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(empty_store(), tmp_path / "mlflow.db")
    return [
        f"data.root={episodes_root()}",
        f"paths.outputs={tmp_path / 'outputs'}",
        f"data.cache_dir={cache_dir}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "threads=1",
    ]


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "signglove_exp", *args]


def cli_env() -> dict[str, str]:
    """The environment minus a tracking URI of the machine's own, so runs land in the test's store."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def run_module(
    module: str, *args: str, cwd: Path, stdin: bytes | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` run in this process, as `python -m` runs it (runpy, `__main__`), from
    `cwd`, without a tracking URI of the machine's own (`env` adds variables): the same code path
    without 5-10 s of imports. Working folder, argv, stdin, signal handlers and the environment are
    restored afterwards."""
    out, err = io.StringIO(), io.StringIO()
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    saved = (os.getcwd(), sys.argv, sys.stdin, *handlers)
    environ = dict(os.environ)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update(env or {})
    code = 0
    try:
        os.chdir(cwd)
        sys.argv = [module, *args]
        if stdin is not None:
            sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
                if isinstance(stop.code, str):
                    print(stop.code, file=sys.stderr)
    finally:
        os.chdir(saved[0])
        sys.argv, sys.stdin = saved[1], saved[2]
        signal.signal(signal.SIGINT, saved[3])
        signal.signal(signal.SIGTERM, saved[4])
        os.environ.clear()
        os.environ.update(environ)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def run_cli(
    *args: str, cwd: Path, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m signglove_exp ARGS`, in this process (`run_module`)."""
    proc = run_module("signglove_exp", *args, cwd=cwd, env=env)
    assert proc.returncode == 0 or not check, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def run_line(line: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """A README line `python -m MODULE ARGS` through `run_module`."""
    words = shlex.split(line)
    assert words[:2] == ["python", "-m"], line
    return run_module(words[2], *words[3:], cwd=cwd, stdin=stdin)


def shared(tmp_path_factory, name: str, build) -> dict:
    """What `build(folder)` returns (JSON), built once per test session, whichever pytest-xdist worker
    asks first; the others wait for it and read it back."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    folder, done = root / f"shared-{name}", root / f"shared-{name}.json"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.is_file():
            folder.mkdir(exist_ok=True)
            done.write_text(json.dumps(build(folder)), encoding="utf-8")
    return json.loads(done.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory, cache_dir):
    """One run from the command line, shared by every test that only reads it: GRU, three epochs, a
    temporary SQLite store. Tests that change a run make their own."""

    def build(tmp: Path) -> dict:
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
        return {"tmp": str(tmp), "run_id": run.info.run_id, "output": proc.stdout + proc.stderr}

    built = shared(tmp_path_factory, "cli-run", build)
    tmp = Path(built["tmp"])
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    return client, client.get_run(built["run_id"]), tmp, built["output"]


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
    """A real `mlflow server` on 127.0.0.1 (without its GenAI job runner: a process none of this uses,
    and 2 s more to start and stop)."""
    mlflow = Path(sys.executable).with_name("mlflow")
    server = spawn(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}"]
        + ["--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
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
