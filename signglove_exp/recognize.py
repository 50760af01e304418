"""A trained model as a recogniser: raw glove samples in, jamo and probabilities out.

    rec = Recognizer.from_checkpoint("epoch042-valloss0.0312.ckpt")   # or Recognizer.from_run(run_id)
    rec.predict(values)             # values: (n_timepoints, n_channels) raw sensor units
    rec.predict_files(["a.csv"])    # episode CSVs, columns found by name

The scaler, channel order, sequence length and padding come from the checkpoint itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from signglove_exp import data
from signglove_exp.module import load_checkpoint


@dataclass
class Prediction:
    jamo: str
    probabilities: dict[str, float]  # every class, in label order

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]


class Recognizer:
    def __init__(self, net: torch.nn.Module, meta: dict):
        self.net, self.meta = net.eval(), meta
        self.classes: list[str] = meta["classes"]
        self.channels: list[str] = meta["channels"]

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Recognizer:
        return cls(*load_checkpoint(path))

    @classmethod
    def from_run(cls, run_id: str, tracking_uri: str | None = None) -> Recognizer:
        from signglove_exp import tracking  # MLflow is needed only for this way in

        return cls.from_checkpoint(tracking.download_checkpoint(run_id, tracking_uri))

    def arrays(self, episodes: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        for i, v in enumerate(episodes):
            if v.ndim != 2 or v.shape[1] != len(self.channels) or len(v) == 0:
                raise ValueError(
                    f"episode {i}: shape {v.shape}, expected (n_timepoints >= 1, {len(self.channels)})"
                    f" with channels {', '.join(self.channels)}"
                )
        x, lengths = data.to_arrays(episodes, self.meta["scaler"], self.meta["seq_len"], self.meta["padding"])
        return torch.from_numpy(x), torch.from_numpy(lengths)

    @torch.no_grad()
    def probabilities(self, episodes: list[np.ndarray]) -> np.ndarray:
        """(n_cases, n_classes) softmax probabilities for raw episodes."""
        x, lengths = self.arrays(episodes)
        return torch.softmax(self.net(x, lengths), dim=1).numpy()

    def predict_batch(self, episodes: list[np.ndarray]) -> list[Prediction]:
        return [
            Prediction(self.classes[int(p.argmax())], dict(zip(self.classes, p.tolist(), strict=True)))
            for p in self.probabilities(episodes)
        ]

    def predict(self, episode: np.ndarray) -> Prediction:
        return self.predict_batch([episode])[0]

    def read(self, path: str | Path) -> np.ndarray:
        """One episode CSV in this model's channel order; a file that does not fit is a clear error."""
        values, reason = data.read_episode(Path(path), self.channels, 1)
        if reason:
            raise data.BadEpisodeError(f"{path}: {reason}")
        return values

    def predict_files(self, paths: list[str | Path]) -> list[Prediction]:
        return self.predict_batch([self.read(p) for p in paths])
