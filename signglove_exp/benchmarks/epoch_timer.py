"""A Lightning callback writing wall and process-CPU clocks at the edges of fit and of each epoch.

Both sides of the training benchmark wear it, so their epochs are timed the same way: an epoch is
from its start to the end of its validation (on_train_epoch_end runs after validation).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytorch_lightning as pl


class EpochTimer(pl.Callback):
    def __init__(self, path: str):
        self.path = Path(path)
        self.marks: list[dict] = []

    def _mark(self, event: str) -> None:
        self.marks.append({"event": event, "wall": time.time(), "cpu": time.process_time()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.marks), encoding="utf-8")

    def on_fit_start(self, trainer, pl_module):
        self._mark("fit_start")

    def on_train_epoch_start(self, trainer, pl_module):
        self._mark("epoch_start")

    def on_train_epoch_end(self, trainer, pl_module):
        self._mark("epoch_end")

    def on_fit_end(self, trainer, pl_module):
        self._mark("fit_end")


def epoch_times(marks: list[dict]) -> list[tuple[float, float]]:
    """(wall s, CPU s) of each whole epoch, from the marks EpochTimer wrote."""
    starts = [m for m in marks if m["event"] == "epoch_start"]
    ends = [m for m in marks if m["event"] == "epoch_end"]
    return [(e["wall"] - s["wall"], e["cpu"] - s["cpu"]) for s, e in zip(starts, ends, strict=False)]
