"""The model card: the one typed description of a trained model, built here and read through `read_card`.

A card travels inside every checkpoint (as plain data under the `signglove` key, so checkpoints load
with `weights_only=True`), inside every ONNX file (as JSON metadata) and with every pyfunc model (in
its MLmodel metadata). Whatever reads a model, reads this: architecture and hyper-parameters,
classes in label order, channels, preprocessing, sequence length, padding rule, readout, scaler,
data fingerprint, lineage and version. Cards written by release 0.1 (no `card_version`) still read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from signglove_exp import project_version

CARD_KEY = "signglove"  # the checkpoint entry, ONNX metadata key and pyfunc metadata key
CARD_VERSION = 2  # 1 (release 0.1, unmarked): a plain dict without lineage; 2: this dataclass


@dataclass
class ModelCard:
    model: dict  # architecture `name` and hyper-parameters, `n_channels` and `n_classes` included
    classes: list[str]  # label order
    channels: list[str]  # input columns, in order
    seq_len: int  # episodes are cut or padded at the end to this many steps
    padding: dict  # {"value": float, "units": "scaled" | "raw"}
    scaler: dict  # {"channels", "mean", "scale", "n_samples_seen"}, over the features
    preprocess: dict = field(default_factory=dict)  # transforms, normalize, features; {} = none, global
    data_fingerprint: str | None = None  # sha256 over the episode files it was trained on
    config: dict = field(default_factory=dict)  # the training config (data, split, ...) it came from
    lineage: dict = field(default_factory=dict)  # source model/run and how it was adapted; {} = scratch
    version: str = field(default_factory=project_version)  # signglove-exp release that wrote it
    card_version: int = CARD_VERSION

    @property
    def name(self) -> str:
        return self.model["name"]

    @property
    def readout(self) -> str:
        return self.model.get("readout", "last_real")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict) -> ModelCard:
        """A card from its plain form; release 0.1's (no card_version, a `legacy` entry instead of
        lineage) is brought up to date."""
        d = dict(d)
        legacy = d.pop("legacy", None)
        if legacy and not d.get("lineage"):
            d["lineage"] = {"source": f"upstream KLP-SignGlove {legacy.get('file')}", "adapted": "imported"}
        d["card_version"] = CARD_VERSION
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def build_net(self, state_dict: dict | None = None):
        """The network this card describes, with `state_dict` loaded when given, in eval mode."""
        from signglove_exp.models import build_model

        net = build_model(**self.model)
        if state_dict is not None:
            net.load_state_dict(state_dict)
        return net.eval()

    def check_fits(self, classes: list[str], channels: list[str], what: str) -> None:
        """Raise naming `what` when data or config with these classes/channels cannot feed this model."""
        if list(channels) != self.channels:
            raise ValueError(
                f"{what}: channels [{', '.join(channels)}] differ from the model's "
                f"[{', '.join(self.channels)}]"
            )
        if list(classes) != self.classes:
            raise ValueError(
                f"{what}: classes [{' '.join(classes)}] differ from the model's [{' '.join(self.classes)}]"
            )


def load_checkpoint_file(path: str | Path) -> dict:
    """A checkpoint file's contents, loaded as plain data only; anything else is a one-line error."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint file") from None
    except Exception as e:  # torch's own message may advise weights_only=False: never follow that here
        raise ValueError(
            f"{path}: not a readable checkpoint ({type(e).__name__}): truncated, or not a PyTorch checkpoint"
        ) from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    return ckpt


def read_checkpoint(path: str | Path) -> tuple[ModelCard, dict, dict]:
    """(card, network state_dict, the whole checkpoint) of a checkpoint file this project wrote."""
    ckpt = load_checkpoint_file(path)
    if CARD_KEY not in ckpt:
        raise ValueError(
            f"{path}: not a signglove-exp checkpoint (no model card); an upstream file is imported "
            "with `python -m signglove_exp.legacy`"
        )
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()}
    return ModelCard.from_dict(ckpt[CARD_KEY]), state, ckpt


def load_model(path: str | Path):
    """(network in eval mode, card) from a checkpoint file alone."""
    card, state, _ = read_checkpoint(path)
    return card.build_net(state), card


def read_card(source: str | Path | dict) -> ModelCard:
    """The card of a checkpoint, an ONNX file, a pyfunc model folder (or its MLmodel file), or a dict."""
    if isinstance(source, dict):
        return ModelCard.from_dict(source.get(CARD_KEY, source))
    path = Path(source)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if CARD_KEY not in props:
            raise ValueError(f"{path}: an ONNX file without a signglove-exp model card")
        return ModelCard.from_dict(json.loads(props[CARD_KEY]))
    if path.is_dir() or path.name == "MLmodel":
        import yaml

        mlmodel = path / "MLmodel" if path.is_dir() else path
        meta = (yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}).get("metadata") or {}
        if CARD_KEY not in meta:
            raise ValueError(f"{mlmodel}: an MLflow model without a signglove-exp model card")
        return ModelCard.from_dict(meta[CARD_KEY])
    return read_checkpoint(path)[0]
