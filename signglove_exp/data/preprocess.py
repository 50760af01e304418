"""Corpus -> split -> preprocessing fitted on the train part only -> arrays the models read.

`prepare` is the whole data path of one run: channel transforms, then normalisation statistics
fitted on the train part only (or a signer's own, or an episode's own: `data.normalize`), or handed
in from a source model. `model_inputs` is the same path for a trained model's card at inference.
Knows nothing of models or MLflow.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from signglove_exp.data.corpus import Corpus, ensure_unpacked, load_corpus
from signglove_exp.data.splits import PARTS, duplicate_copies, split
from signglove_exp.data.transforms import apply_transforms, check_preprocess


@dataclass
class Prepared:
    corpus: Corpus
    parts: dict[str, list[int]]  # part name -> indices into corpus.episodes (usable episodes only)
    scaler: dict  # channels, mean, scale, n_samples_seen: JSON-ready (the train part's, or the source's)
    seq_len: int
    preprocess: dict  # transforms, normalize scope and the resulting feature names: for the model card
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    # part -> (x (n_cases, n_timepoints, n_channels) float32, lengths int64, labels int64)
    duplicates: dict[int, int] = field(default_factory=dict)  # byte-identical copy -> its first file


def fit_scaler(values: list[np.ndarray], channels: list[str], seq_len: int | None = None) -> dict:
    """Per-channel mean and standard deviation over the real steps the model reads (the first seq_len
    of each episode), as sklearn's StandardScaler would: a very long episode cannot outweigh the rest."""
    steps = np.concatenate([v[:seq_len] for v in values]).astype(np.float64)
    std = steps.std(axis=0)
    return {
        "channels": list(channels),
        "mean": steps.mean(axis=0).tolist(),
        "scale": np.where(std > 0, std, 1.0).tolist(),
        "n_samples_seen": int(len(steps)),
    }


def to_arrays(
    values: list[np.ndarray], scaler: dict | list[dict], seq_len: int, padding: dict
) -> tuple[np.ndarray, np.ndarray]:
    """Cut or pad at the end to seq_len and scale, with lengths of the real steps. `scaler` is one for
    every episode, or a list of one per episode (per-signer or per-episode normalisation).

    padding["units"] says where padding["value"] lives: "scaled" pads after scaling (the default);
    "raw" pads in sensor units and scales the padded steps too, as upstream did.
    """
    units = padding["units"]  # read once: a config node is slow to index per episode
    if units not in ("scaled", "raw"):
        raise ValueError(f"padding units must be 'scaled' or 'raw', not {units!r}")
    scalers = scaler if isinstance(scaler, list) else [scaler] * len(values)
    n_features = len(scalers[0]["mean"]) if scalers else 0
    x = np.full((len(values), seq_len, n_features), padding["value"], dtype=np.float64)
    lengths = np.zeros(len(values), dtype=np.int64)
    for i, (v, s) in enumerate(zip(values, scalers, strict=True)):
        mean, scale = np.asarray(s["mean"]), np.asarray(s["scale"])
        n = min(len(v), seq_len)
        if units == "raw":
            x[i, :n] = v[:n]
            x[i] = (x[i] - mean) / scale
        else:
            x[i, :n] = (v[:n] - mean) / scale
        lengths[i] = n
    return x.astype(np.float32), lengths


def episode_scalers(
    values: list[np.ndarray], groups: list[str], scope: str, scaler: dict, names: list[str], seq_len: int
) -> list[dict]:
    """The statistics that scale each episode: `scaler` (global), those of every episode of its group
    (per_signer: a signer's own recordings, labels unused) or its own (per_episode)."""
    if scope == "global":
        return [scaler] * len(values)
    if scope == "per_episode":
        return [fit_scaler([v], names, seq_len) for v in values]
    of = {
        g: fit_scaler([v for v, h in zip(values, groups, strict=True) if h == g], names, seq_len)
        for g in set(groups)
    }
    return [of[g] for g in groups]


class NeedsSignerStatistics(ValueError):
    """A per_signer model asked to read episodes without anyone's statistics."""

    def __init__(self, what: str):
        super().__init__(
            f"{what}: this model normalises per signer (data.normalize=per_signer) and holds no signer's "
            "statistics, so it cannot read an episode alone: make your personal model first, python -m "
            "signglove_exp.calibrate MODEL --data YOUR_RECORDINGS --shots 0 (statistics only, no labels "
            "used), and use that"
        )


def signer_statistics_needed(card) -> bool:
    """Whether the card normalises per signer but holds no signer's statistics (a base model; a
    personal model made by `calibrate` holds its person's)."""
    preprocess = card.preprocess or {}
    return preprocess.get("normalize") == "per_signer" and preprocess.get("scaler_of") != "signer"


def model_inputs(
    episodes: list[np.ndarray], card, signers: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Raw episodes in the card's channel order -> the (x, lengths) its network reads: the card's
    transforms and padding, and whose statistics the card says: its scaler (global, or a personal
    model's person), each episode's own (per_episode), or, for a per_signer model without a person's,
    those of each signer's episodes among `episodes` (`signers`: one name per episode; labels unused).
    A per_signer model given no signers is refused, never silently scaled with the training signers'."""
    preprocess = card.preprocess or {}
    values, names = apply_transforms(episodes, card.channels, preprocess.get("transforms", {}))
    scope = "per_episode" if preprocess.get("normalize") == "per_episode" else "global"
    if signer_statistics_needed(card):
        if signers is None:
            raise NeedsSignerStatistics(f"{len(episodes)} episode(s) without their signers")
        scope = "per_signer"
    groups = list(signers) if signers is not None else [""] * len(values)
    scalers = episode_scalers(values, groups, scope, card.scaler, names, card.seq_len)
    return to_arrays(values, scalers, card.seq_len, card.padding)


def windows(episodes: list[np.ndarray], seq_len: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Episodes as the windows a model reads: one longer than `seq_len` steps (a held sign recorded
    for 9 s, 300 samples, where training episodes hold 80) becomes windows of `seq_len` steps half a
    window apart, the last ending with the episode, so all of it is read and its windows `vote`;
    a shorter one is itself. Returns the windows and, for each, the index of its episode."""
    out, owners, step = [], [], max(seq_len // 2, 1)
    for i, v in enumerate(episodes):
        last = max(len(v) - seq_len, 0)  # where the last window starts: 0 for an episode that fits
        starts = sorted({*range(0, last + 1, step), last})
        out += [v[s : s + seq_len] for s in starts]
        owners += [i] * len(starts)
    return out, np.asarray(owners, dtype=np.int64)


def vote(probabilities: np.ndarray, owners: np.ndarray, n_cases: int) -> np.ndarray:
    """Each episode's probabilities: the mean over its windows (`windows`)."""
    total = np.zeros((n_cases, probabilities.shape[1]), dtype=np.float64)
    np.add.at(total, owners, probabilities)
    return (total / np.bincount(owners, minlength=n_cases)[:, None]).astype(probabilities.dtype)


def check_settings(cfg_data) -> None:
    """The data settings a run cannot start with, each named with its config key."""
    for key, lowest in (("seq_len", 1), ("batch_size", 1), ("eval_batch_size", 0), ("min_len", 1)):
        value = cfg_data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise ValueError(f"data.{key}={value!r}: must be a whole number >= {lowest}")
    for key in ("channels", "classes"):
        if not cfg_data[key]:
            raise ValueError(f"data.{key} is empty: name at least one")
        doubled = sorted({c for c in cfg_data[key] if list(cfg_data[key]).count(c) > 1})
        if doubled:
            raise ValueError(f"data.{key} names {', '.join(map(str, doubled))} more than once")


def check_usable(corpus: Corpus, allow_missing_classes: bool) -> None:
    """No usable episode at all is an error that says why (e.g. a channel no file has); so is a class
    with no episode, unless allowed: a model trained without it can never predict it."""
    if not any(e.reason is None for e in corpus.episodes):
        reasons = Counter(r for _, r in corpus.rejected)
        common = "; ".join(f"{n} file(s): {r}" for r, n in reasons.most_common(3)) or "no labelled episode"
        raise ValueError(f"no usable episode under data.root {corpus.root} ({common})")
    present = {e.label for e in corpus.episodes if e.reason is None}
    missing = [c for k, c in enumerate(corpus.classes) if k not in present]
    if missing and not allow_missing_classes:
        raise ValueError(
            f"data.classes {' '.join(missing)} have no usable episode under data.root {corpus.root}: leave "
            "them out of data.classes, or set data.allow_missing_classes=true"
        )


def prepare(cfg_data, cfg_split, scaler: dict | None = None) -> Prepared:
    """The whole data path of one run: corpus -> split -> scaler (train only, or `scaler`) -> arrays."""
    check_settings(cfg_data)
    root = ensure_unpacked(cfg_data)
    corpus = load_corpus(
        root,
        list(cfg_data.classes),
        list(cfg_data.channels),
        cfg_data.min_len,
        cfg_data.signer_prefix,
        cfg_data.on_bad_file,
        cfg_data.get("cache_dir"),
    )
    check_usable(corpus, cfg_data.get("allow_missing_classes", False))
    parts = split(corpus, cfg_split)
    eps = corpus.episodes
    preprocess = {
        "transforms": _plain(cfg_data.get("transforms")),
        "normalize": cfg_data.get("normalize", "global"),
    }
    check_preprocess(preprocess)
    usable = sorted(i for idx in parts.values() for i in idx)
    values, names = apply_transforms(
        [eps[i].values for i in usable], corpus.channels, preprocess["transforms"]
    )
    at = dict(zip(usable, range(len(usable)), strict=True))
    if scaler is None:
        scaler = fit_scaler([values[at[i]] for i in parts["train"]], names, cfg_data.seq_len)
    elif list(scaler["channels"]) != names:
        raise ValueError(
            f"the source model's scaler is for features {scaler['channels']}, this data gives {names}"
        )
    scalers = episode_scalers(
        values, [eps[i].signer for i in usable], preprocess["normalize"], scaler, names, cfg_data.seq_len
    )
    preprocess["features"] = names
    prepared = Prepared(
        corpus, parts, scaler, cfg_data.seq_len, preprocess, duplicates=duplicate_copies(corpus)
    )
    for part, idx in parts.items():
        x, lengths = to_arrays(
            [values[at[i]] for i in idx], [scalers[at[i]] for i in idx], cfg_data.seq_len, cfg_data.padding
        )
        prepared.arrays[part] = (x, lengths, np.array([eps[i].label for i in idx], dtype=np.int64))
    return prepared


def _plain(transforms) -> dict:
    """data.transforms as a plain {name: [channels]} (an OmegaConf node or None in)."""
    return {str(k): [str(c) for c in (v or [])] for k, v in (transforms or {}).items()}


def write_reports(prepared: Prepared, out_dir: Path) -> list[Path]:
    """The bad-file report, the split manifest, per-part class counts and the scaler, as run files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = prepared.corpus
    bad = out_dir / "bad_files.tsv"
    with open(bad, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["path", "reason"])
        w.writerows(corpus.rejected)
    manifest = out_dir / "split_manifest.csv"
    part_of = {i: p for p, idx in prepared.parts.items() for i in idx}
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "part", "jamo", "signer", "session"])
        for i, e in enumerate(corpus.episodes):
            w.writerow(
                [e.path, part_of.get(i, "rejected" if e.reason else "unused"), e.jamo, e.signer, e.session]
            )
    counts = out_dir / "class_counts.csv"
    with open(counts, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["jamo", *PARTS])
        for label, jamo in enumerate(corpus.classes):
            w.writerow(
                [jamo, *(sum(corpus.episodes[i].label == label for i in prepared.parts[p]) for p in PARTS)]
            )
    duplicates = out_dir / "duplicates.tsv"
    with open(duplicates, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["path", "same bytes as", "part of both"])
        w.writerows(
            [corpus.episodes[i].path, corpus.episodes[j].path, part_of.get(j, "")]
            for i, j in prepared.duplicates.items()
        )
    scaler = out_dir / "scaler.json"
    scaler.write_text(json.dumps(prepared.scaler, indent=2, ensure_ascii=False), encoding="utf-8")
    return [bad, manifest, counts, duplicates, scaler]
