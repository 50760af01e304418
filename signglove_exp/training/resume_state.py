"""What a checkpoint keeps beyond Lightning's own state, so a resumed run continues exactly.

Lightning restores weights, optimiser, scheduler, loops and callbacks, but not the random streams:
the global RNGs (dropout) and the training loader's shuffling generator. With these saved at every
epoch end and restored on resume, a run killed and resumed ends with the same weights and test
metrics as one never stopped (on CPU). A run folder moved before its resume keeps its best
checkpoint: the checkpoint callbacks' paths are moved with it.
"""

from __future__ import annotations

import random
import time

import numpy as np
import torch
from pytorch_lightning.callbacks import Callback

from signglove_exp.training.start import moved_paths


class ResumeState(Callback):
    def __init__(self, loader_generator: torch.Generator) -> None:
        self.generator = loader_generator
        self.train_s = 0.0  # training time of earlier attempts, so time/train_s covers the whole run
        self._started = time.time()

    def elapsed_s(self) -> float:
        return self.train_s + time.time() - self._started

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate(),
            "loader": self.generator.get_state(),
            "train_s": self.elapsed_s(),
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        now = trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else None
        for state in checkpoint.get("callbacks", {}).values():
            before = state.get("dirpath") if isinstance(state, dict) else None
            if now and before and before != now:
                state.update(moved_paths(state, before, now))

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
        self.generator.set_state(state["loader"])
        self.train_s, self._started = state["train_s"], time.time()
