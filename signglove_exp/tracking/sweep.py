"""A multirun's parent run: opened before its jobs, summarised, reported and closed after them.

The parent run is named in `sweep_run.json` in the sweep folder; every job reads it from there (also in
worker processes and on cluster nodes), and a resumed sweep finds and continues the same parent.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from signglove_exp.reporting import compare
from signglove_exp.tracking.queries import RunSelection, fetch_runs
from signglove_exp.tracking.records import SWEEP_RECORD, close_stale_runs, read_record, write_record
from signglove_exp.tracking.runs import log_report, open_parent
from signglove_exp.tracking.store import ensure_experiment, tracking_uri


def read_parent(sweep_dir: str | Path) -> dict | None:
    return read_record(Path(sweep_dir) / SWEEP_RECORD)


class SweepTracking(Callback):
    """Hydra callback: the parent run of a multirun, closed by `close_open_sweep` if it is stopped."""

    open: ClassVar[SweepTracking | None] = None  # the sweep this process is running

    def __init__(self) -> None:
        self.client: MlflowClient | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.client, experiment_id = ensure_experiment(config)
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        uri = tracking_uri(config)
        close_stale_runs(self.client, experiment_id)
        known = read_parent(self.sweep_dir)
        if known:  # a resumed sweep continues its parent run
            self.parent = known["run_id"]
            self.client.update_run(self.parent, "RUNNING")
        else:
            tags = {"sweep": self.sweep_dir.name, "signglove.run_dir": str(self.sweep_dir.resolve())}
            self.parent = open_parent(config, f"sweep-{self.sweep_dir.name}", tags)
        record = {"run_id": self.parent, "sweep": self.sweep_dir.name, "tracking_uri": uri}
        write_record(self.sweep_dir / SWEEP_RECORD, **record)
        self.selection = RunSelection(config.tracking.experiment, parent=self.parent, uri=uri)
        self.started = time.time()
        SweepTracking.open = self

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.client is not None:
            self.close()

    def close(self, stopped: str | None = None) -> None:
        """Summary, report over the finished runs, parent run ended. `stopped` (KILLED or FAILED) says
        the jobs did not all return; runs a killed worker left RUNNING get that status too."""
        SweepTracking.open = None
        try:
            runs, _ = fetch_runs(self.selection)
        except ValueError:
            runs = []
        for r in runs:
            if stopped and r["status"] == "RUNNING":
                self.client.set_terminated(r["run_id"], stopped)
                r["status"] = stopped
        name = self.sweep_dir.name
        table = compare.sweep_table(runs) if runs else "(no runs)"
        print(f"\nSweep {name}: {len(runs)} runs, parent run {self.parent}\n\n{table}\n")
        summary = self.sweep_dir / "sweep_summary.md"
        summary.write_text(table + "\n", encoding="utf-8")
        self.client.log_artifact(self.parent, str(summary))
        if any(r["status"] == "FINISHED" for r in runs):
            files = compare.build_report(runs, self.sweep_dir / "report", f"Sweep {name}")
            log_report(self.selection.uri, self.parent, files)
            print(f"Comparison report: {files[0]}")
        self.client.log_metric(self.parent, "time/sweep_s", time.time() - self.started)
        failed = any(r["status"] != "FINISHED" for r in runs)
        self.client.set_terminated(self.parent, stopped or ("FAILED" if failed else "FINISHED"))


def close_open_sweep(stopped: str) -> None:
    """Ends the multirun this process is running, if any, after Ctrl-C/SIGTERM (KILLED) or an error
    (FAILED), so that no run is left RUNNING and the finished ones still get their report."""
    if SweepTracking.open is not None:
        SweepTracking.open.close(stopped)
