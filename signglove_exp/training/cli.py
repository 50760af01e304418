"""The experiment command: `python -m signglove_exp [overrides]` (or `signglove-exp`).

Hydra composes the config; `main` trains it and returns `optimized_metric` to sweepers; `cli` turns
`resume=` into the command line that continues a run or sweep, and ends a stopped or broken
multirun's MLflow runs. torch, Lightning and MLflow are imported only when a run starts, so `--help`
and `--cfg job` answer at once.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from signglove_exp import BUNDLED_DIR, CONF_DIR

if TYPE_CHECKING:
    from signglove_exp.training.train import Launch

OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)
OmegaConf.register_new_resolver("bundled_dir", lambda: str(BUNDLED_DIR), replace=True)
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)  # run folders of runs started together


def compose(*overrides: str) -> DictConfig:
    """The config the CLI would compose, for code and tests that run without `@hydra.main`."""
    with hydra.initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra.compose("config", overrides=list(overrides))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    from signglove_exp.console import quiet
    from signglove_exp.training.train import objective, train

    quiet()  # also in a launcher's worker process
    try:
        result = train(cfg, launch=launch())
    except (ValueError, OSError) as error:  # bad settings or data, a full disk: one line, not a traceback
        single = HydraConfig.get().mode == RunMode.RUN
        if single and os.environ.get("HYDRA_FULL_ERROR") != "1":
            raise SystemExit(f"Error: {error}") from None
        raise
    return objective(cfg, result.metrics)


def launch() -> Launch:
    """Hydra's runtime facts about this job, for `train`: its overrides, its multirun, parallel jobs."""
    from signglove_exp.training.train import Launch

    hydra_cfg = HydraConfig.get()
    overrides = tuple(hydra_cfg.overrides.task)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return Launch(overrides)
    launcher = hydra_cfg.launcher
    parallel = 1
    if "joblib" in launcher.get("_target_", ""):
        n_jobs = launcher.get("n_jobs", 1)
        parallel = None if n_jobs is None or n_jobs < 1 else n_jobs
    return Launch(overrides, Path(hydra_cfg.sweep.dir), hydra_cfg.job.num, parallel)


def resume_arguments(target: str, rest: list[str]) -> list[str]:
    """`resume=TARGET` as the command line that continues it: a run folder (run.json), a sweep folder
    (multirun.yaml), or an MLflow run id (its folder is tagged `signglove.run_dir`)."""
    from signglove_exp.tracking.records import RUN_RECORD

    folder = Path(target)
    if (folder / "multirun.yaml").is_file():
        saved = _saved_overrides(folder / "multirun.yaml", "hydra.sweep.dir", target)
        return ["-m", *saved, f"hydra.sweep.dir={folder.resolve()}", *rest]
    if (folder / RUN_RECORD).is_file():
        saved = _saved_overrides(folder / ".hydra" / "hydra.yaml", "hydra.run.dir", target)
        # its outputs folder as it was, wherever this command runs (the default is under the working folder)
        outputs = f"paths.outputs={OmegaConf.load(folder / 'config.yaml').paths.outputs}"
        return [*saved, outputs, f"hydra.run.dir={folder.resolve()}", *rest]
    if folder.exists():
        raise SystemExit(f"resume={target}: neither a run folder (no {RUN_RECORD}) nor a sweep folder")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from signglove_exp.tracking.store import resolve_uri

    uri = resolve_uri(next((o.split("=", 1)[1] for o in rest if o.startswith("tracking.uri=")), None))
    try:
        run_dir = MlflowClient(uri).get_run(target).data.tags.get("signglove.run_dir")
    except MlflowException:
        raise SystemExit(f"resume={target}: not a folder, and no MLflow run {target} at {uri}") from None
    if not run_dir or not Path(run_dir).is_dir():
        raise SystemExit(
            f"resume={target}: the run's folder {run_dir} is not on this machine (it holds last.ckpt)"
        )
    return resume_arguments(run_dir, rest)


def _saved_overrides(path: Path, folder_key: str, target: str) -> list[str]:
    """The command line a run or sweep folder was started with, less its folder and mode; checked,
    since a folder is data (`training.targets`)."""
    from signglove_exp.training.targets import check_overrides

    hydra_cfg = OmegaConf.load(path).hydra
    kept = [o for o in hydra_cfg.overrides.hydra if not o.startswith((f"{folder_key}=", "hydra.mode="))]
    try:
        check_overrides([*hydra_cfg.overrides.task, *kept], f"resume={target}: {path}")
    except ValueError as error:
        raise SystemExit(f"Error: {error}") from None
    return [*hydra_cfg.overrides.task, *kept]


def cli(argv: list[str] | None = None) -> None:
    """`main` as a command (`argv`: the words after the command; default: the process's own).
    `resume=` continues a run or sweep. Ctrl-C and SIGTERM (a cluster's preemption) stop it cleanly:
    runs KILLED, last.ckpt kept, the finished runs of a multirun reported, exit status 128 + the
    signal; a broken multirun's runs end FAILED. The signal handlers it sets are undone on return."""
    argv = list(sys.argv[1:] if argv is None else argv)
    targets = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    if targets:
        argv = resume_arguments(targets[-1], [a for a in argv if not a.startswith("resume=")])
    saved = sys.argv, signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    sys.argv = [saved[0][0] if saved[0] else "signglove-exp", *argv]
    try:
        _run_main()
    finally:
        sys.argv = saved[0]
        signal.signal(signal.SIGINT, saved[1])
        signal.signal(signal.SIGTERM, saved[2])


def _run_main() -> None:
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    # A process started with SIGINT ignored (`nohup ... &`) keeps ignoring it.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        main()
    except BaseException:
        if received:  # a second signal must not cut the clean-up short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if "signglove_exp.tracking.sweep" in sys.modules:  # a multirun was under way
            from signglove_exp.tracking.sweep import close_open_sweep

            close_open_sweep("KILLED" if received else "FAILED")
        if received:
            name = signal.Signals(received[0]).name
            print(f"Stopped by {'Ctrl-C' if name == 'SIGINT' else name}.", file=sys.stderr)
            raise SystemExit(128 + received[0]) from None
        raise
