"""A trained model as a recogniser: raw glove samples in, jamo and probabilities out.

    rec = Recognizer.load("model.ckpt")     # or "model.onnx", or an MLflow run id or model URI
    rec.predict(values)                     # values: (n_timepoints, n_channels) in raw sensor units
    rec.predict_files(["a.csv"])            # episode CSVs, columns found by name

The channel order, transforms, scaler, sequence length and padding come from the model's card. torch and
onnxruntime are imported only by the loader that needs them, so an ONNX deployment runs without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from signglove_exp import data
from signglove_exp.card import ModelCard, read_card


@dataclass
class Prediction:
    jamo: str
    probabilities: dict[str, float]  # every class, in label order

    @property
    def confidence(self) -> float:
        return self.probabilities[self.jamo]

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]


def source_run_of(model: str) -> str | None:
    """The MLflow run a model reference names, if it names one."""
    if model.startswith("runs:/"):
        return model.split("/")[1]
    path = Path(model)
    return None if path.is_file() or path.suffix == ".onnx" or model.startswith("models:/") else model


class Recognizer:
    """`run(x, lengths) -> probabilities` is the network (PyTorch or ONNX Runtime); the card feeds it."""

    def __init__(self, run: Callable[[np.ndarray, np.ndarray], np.ndarray], card: ModelCard, net=None):
        self.run, self.card, self.net = run, card, net  # net: the torch module, when there is one
        self.classes: list[str] = card.classes
        self.channels: list[str] = card.channels

    @classmethod
    def from_torch(cls, net, card: ModelCard) -> Recognizer:
        import torch

        net.eval()

        @torch.no_grad()
        def run(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
            return torch.softmax(net(torch.from_numpy(x), torch.from_numpy(lengths)), dim=1).numpy()

        return cls(run, card, net)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Recognizer:
        from signglove_exp.card import load_model

        net, card = load_model(path)
        return cls.from_torch(net, card)

    @classmethod
    def from_onnx(cls, path: str | Path, threads: int = 0) -> Recognizer:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
            return session.run(["probabilities"], {"x": x, "lengths": lengths})[0]

        return cls(run, read_card(path))

    def on_onnx_runtime(self, folder: str | Path, threads: int = 1) -> Recognizer:
        """The same model run by ONNX Runtime (a window 5-10x faster than PyTorch eager, `make bench`),
        exported into `folder`; the torch module stays, for what adapts weights (enrolment)."""
        from signglove_exp.inference.onnx_export import export_onnx

        path = export_onnx(self.net, self.card, Path(folder) / f"{self.card.name}.onnx")
        return Recognizer(Recognizer.from_onnx(path, threads).run, self.card, self.net)

    @classmethod
    def from_run(cls, run_id: str, tracking_uri: str | None = None) -> Recognizer:
        from signglove_exp.tracking.queries import download_checkpoint

        return cls.from_checkpoint(download_checkpoint(run_id, tracking_uri))

    @classmethod
    def load(cls, model: str | Path, tracking_uri: str | None = None) -> Recognizer:
        """A .onnx file, a checkpoint file, or else an MLflow run id or model URI (runs:/..., models:/...)."""
        path = Path(model)
        if path.suffix == ".onnx":
            return cls.from_onnx(path)
        if path.is_file():
            return cls.from_checkpoint(path)
        return cls.from_run(str(model), tracking_uri)

    def check_standalone(self, what: str) -> None:
        """Refuse, naming `what`, a model that cannot read an episode alone (a per_signer base model):
        recognition, streaming, serving and export need a personal model."""
        if data.signer_statistics_needed(self.card):
            raise data.NeedsSignerStatistics(what)

    def probabilities(self, episodes: list[np.ndarray], signers: list[str] | None = None) -> np.ndarray:
        """(n_cases, n_classes) probabilities for raw episodes (`signers`: see `data.model_inputs`); an
        episode longer than the model's window is read window by window, and they vote (`data.windows`)."""
        for i, v in enumerate(episodes):
            if v.ndim != 2 or v.shape[1] != len(self.channels) or len(v) == 0:
                raise ValueError(
                    f"episode {i}: shape {v.shape}, expected (n_timepoints >= 1, {len(self.channels)}) "
                    f"with channels {', '.join(self.channels)}"
                )
        parts, owners = data.windows(episodes, self.card.seq_len)
        by_part = None if signers is None else [signers[o] for o in owners]
        return data.vote(self.run(*data.model_inputs(parts, self.card, by_part)), owners, len(episodes))

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

    def predict_files(self, paths: Iterable[str | Path]) -> list[Prediction]:
        return self.predict_batch([self.read(p) for p in paths])
