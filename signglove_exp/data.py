"""From a folder of episode CSVs to scaled tensors: find, validate, label, split, scale.

A jamo label is born in `load_corpus` (the class folder's index in `data.classes`); the scaler is
fitted in `fit_scaler`, on the train part's real steps only; `prepare` runs the whole path.
Knows nothing of models or MLflow: it returns arrays, records and reports.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tarfile
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

PARTS = ("train", "val", "test")
CACHE_VERSION = 1  # bump when parsing rules change, so old caches are not reused


class BadEpisodeError(ValueError):
    """An episode file that cannot be used, raised when `data.on_bad_file=raise`."""


@dataclass
class Episode:
    path: str  # relative to the data root, POSIX separators
    jamo: str  # the class folder name (NFC)
    label: int  # index of `jamo` in data.classes
    signer: str  # the subset folder, less data.signer_prefix
    session: str  # the numbered recording-block folder
    values: np.ndarray | None  # (n_timepoints, n_channels) raw units; None when rejected
    reason: str | None = None  # why the file was rejected; None when usable


@dataclass
class Corpus:
    root: Path
    classes: list[str]
    channels: list[str]
    episodes: list[Episode]  # every file with a known class, in upstream order, rejected ones included
    unlabelled: list[tuple[str, str]]  # (path, reason) of files whose class folder is not a known class
    fingerprint: str  # sha256 over every episode file's relative path and bytes

    @property
    def rejected(self) -> list[tuple[str, str]]:
        return [(e.path, e.reason) for e in self.episodes if e.reason] + self.unlabelled


@dataclass
class Prepared:
    corpus: Corpus
    parts: dict[str, list[int]]  # part name -> indices into corpus.episodes (usable episodes only)
    scaler: dict  # channels, mean, scale, n_samples_seen: JSON-ready
    seq_len: int
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    # part -> (x (n_cases, n_timepoints, n_channels) float32, lengths int64, labels int64)


def ensure_unpacked(root: str | Path, archive: str | Path | None) -> Path:
    """Unpack the bundled archive on first use; a user's own folder is used as it is."""
    root = Path(root)
    if root.is_dir():
        return root
    if not archive or not Path(archive).is_file():
        raise FileNotFoundError(f"data.root {root} does not exist (and no data.archive to unpack it from)")
    with tempfile.TemporaryDirectory(dir=root.parent if root.parent.is_dir() else None) as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        unpacked = [p for p in Path(tmp).iterdir() if p.is_dir()]
        if len(unpacked) != 1:
            raise ValueError(f"{archive}: expected one top-level folder, found {len(unpacked)}")
        root.parent.mkdir(parents=True, exist_ok=True)
        if not root.exists():  # a parallel job may have won the race; its copy is identical
            shutil.move(str(unpacked[0]), root)
    return root


def _natural(s: str) -> tuple:
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def read_episode(path: Path, channels: list[str], min_len: int) -> tuple[np.ndarray | None, str | None]:
    """Parse one episode CSV into (n_timepoints, n_channels), or say why it cannot be used."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return None, f"unreadable: {e}"
    if not rows:
        return None, "empty file"
    header = [h.strip() for h in rows[0]]
    missing = [c for c in channels if c not in header]
    if missing:
        return None, f"missing column(s) {', '.join(missing)}"
    cols = [header.index(c) for c in channels]
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            return None, f"line {line}: {len(row)} fields, header has {len(header)}"
    raw = [[row[j] for j in cols] for row in rows[1:]]
    try:
        values = np.array(raw, dtype=np.float64).reshape(len(raw), len(cols))
    except ValueError:
        line, name, text = next(
            (i, channels[k], v)
            for i, r in enumerate(raw, start=2)
            for k, v in enumerate(r)
            if not _is_float(v)
        )
        return None, f"line {line}: non-numeric value {text!r} in column {name}"
    bad = ~np.isfinite(values)
    if bad.any():
        i, k = np.argwhere(bad)[0]
        return None, f"line {i + 2}: non-finite value {raw[i][k]!r} in column {channels[k]}"
    if len(values) < min_len:
        return None, f"too short: {len(values)} rows < data.min_len={min_len}"
    return values, None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def fingerprint_files(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def load_corpus(
    root: str | Path,
    classes: list[str],
    channels: list[str],
    min_len: int,
    signer_prefix: str = "",
    on_bad_file: str = "skip",
    cache_dir: str | Path | None = None,
) -> Corpus:
    """Find every `episode_*.csv` under root (any depth) and parse it, through a cache."""
    if on_bad_file not in ("skip", "raise"):
        raise ValueError(f"data.on_bad_file must be 'skip' or 'raise', not {on_bad_file!r}")
    root = Path(root)
    files = sorted(root.rglob("episode_*.csv"))
    if not files:
        raise FileNotFoundError(f"no episode_*.csv files under data.root {root}")
    fingerprint = fingerprint_files(root, files)
    key = hashlib.sha256(
        json.dumps([CACHE_VERSION, fingerprint, channels, classes, min_len, signer_prefix]).encode()
    ).hexdigest()[:16]
    cache = Path(cache_dir) / f"episodes-{key}.npz" if cache_dir else None
    if cache and cache.is_file():
        corpus = _read_cache(cache, root, classes, channels, fingerprint)
    else:
        corpus = _parse(root, files, classes, channels, min_len, signer_prefix, fingerprint)
        if cache:
            _write_cache(cache, corpus)
    if on_bad_file == "raise" and corpus.rejected:
        path, reason = corpus.rejected[0]
        raise BadEpisodeError(f"{root / path}: {reason} (set data.on_bad_file=skip to skip such files)")
    return corpus


def _parse(root, files, classes, channels, min_len, signer_prefix, fingerprint) -> Corpus:
    index = {c: i for i, c in enumerate(classes)}
    episodes, unlabelled = [], []
    for f in files:
        rel = f.relative_to(root)
        if len(rel.parts) < 3:
            unlabelled.append((rel.as_posix(), "not inside a <class>/<session>/ folder"))
            continue
        jamo = unicodedata.normalize("NFC", rel.parts[-3])
        if jamo not in index:
            unlabelled.append((rel.as_posix(), f"class folder {jamo!r} is not in data.classes"))
            continue
        signer = rel.parts[0].removeprefix(signer_prefix) if len(rel.parts) >= 4 else ""
        values, reason = read_episode(f, channels, min_len)
        episodes.append(Episode(rel.as_posix(), jamo, index[jamo], signer, rel.parts[-2], values, reason))
    episodes.sort(key=lambda e: (e.label, _natural(e.session), Path(e.path).name))
    return Corpus(root, list(classes), list(channels), episodes, unlabelled, fingerprint)


def _write_cache(path: Path, corpus: Corpus) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "episodes": [[e.path, e.jamo, e.label, e.signer, e.session, e.reason] for e in corpus.episodes],
        "unlabelled": corpus.unlabelled,
    }
    used = [e.values for e in corpus.episodes if e.values is not None]
    values = np.concatenate(used) if used else np.zeros((0, len(corpus.channels)))
    lengths = np.array([len(v) for v in used], dtype=np.int64)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        np.savez(tmp, meta=np.array(json.dumps(meta)), values=values, lengths=lengths)
    Path(tmp.name).replace(path)


def _read_cache(path: Path, root: Path, classes, channels, fingerprint) -> Corpus:
    with np.load(path, allow_pickle=False) as z:
        meta, values, lengths = json.loads(str(z["meta"])), z["values"], z["lengths"]
    chunks = iter(np.split(values, np.cumsum(lengths)[:-1]) if len(lengths) else [])
    episodes = [
        Episode(p, j, lab, s, sess, None if reason else next(chunks), reason)
        for p, j, lab, s, sess, reason in meta["episodes"]
    ]
    unlabelled = [tuple(u) for u in meta["unlabelled"]]
    return Corpus(root, list(classes), list(channels), episodes, unlabelled, fingerprint)


def split_stratified(
    labels: np.ndarray, seed: int, test_size: float, val_size: float
) -> dict[str, np.ndarray]:
    """Upstream's two calls to train_test_split, so the reference partition is reproduced exactly."""
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=test_size, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_size, stratify=labels[rest], random_state=seed)
    return {"train": train, "val": val, "test": test}


def _carve_val(
    idx: np.ndarray, labels: np.ndarray, val_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    train, val = train_test_split(idx, test_size=val_size, stratify=labels[idx], random_state=seed)
    return train, val


def split_kfold(
    labels: np.ndarray, seed: int, n_folds: int, fold: int, val_size: float
) -> dict[str, np.ndarray]:
    """Fold `fold` of a stratified k-fold is the test part; validation is carved from the other folds."""
    if not 0 <= fold < n_folds:
        raise ValueError(f"split.fold={fold} is outside 0..{n_folds - 1} (split.n_folds={n_folds})")
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(labels, labels)
    rest, test = list(folds)[fold]
    train, val = _carve_val(rest, labels, val_size, seed)
    return {"train": train, "val": val, "test": test}


def split_by_group(
    labels: np.ndarray,
    groups: np.ndarray,
    test_groups: list[str],
    val_groups: list[str] | None,
    val_size: float,
    seed: int,
    what: str,
) -> dict[str, np.ndarray]:
    """Whole groups (signers, sessions) held out for test, and for validation when val_groups is given."""
    known = sorted(set(groups.tolist()))
    for g in [*test_groups, *(val_groups or [])]:
        if g not in known:
            raise ValueError(f"{what} {g!r} is not in the data; known: {', '.join(known)}")
    idx = np.arange(len(labels))
    test = idx[np.isin(groups, test_groups)]
    if val_groups:
        val = idx[np.isin(groups, val_groups)]
        train = idx[~np.isin(groups, [*test_groups, *val_groups])]
    else:
        train, val = _carve_val(idx[~np.isin(groups, test_groups)], labels, val_size, seed)
    return {"train": train, "val": val, "test": test}


def split(corpus: Corpus, cfg) -> dict[str, list[int]]:
    """Split every labelled episode, rejected ones included so none moves another; then drop those."""
    eps = corpus.episodes
    labels = np.array([e.label for e in eps])
    if cfg.strategy == "stratified":
        parts = split_stratified(labels, cfg.seed, cfg.test_size, cfg.val_size)
    elif cfg.strategy == "kfold":
        parts = split_kfold(labels, cfg.seed, cfg.n_folds, cfg.fold, cfg.val_size)
    elif cfg.strategy == "by_session":  # session k of every signer: a whole recording block held out
        sessions = np.array([e.session for e in eps])
        val_sessions = [str(v) for v in cfg.val_sessions] if cfg.val_sessions else None
        test_sessions = [str(v) for v in cfg.test_sessions]
        parts = split_by_group(
            labels, sessions, test_sessions, val_sessions, cfg.val_size, cfg.seed, "session"
        )
    elif cfg.strategy == "by_signer":
        signers = np.array([e.signer for e in eps])
        parts = split_by_group(labels, signers, [cfg.test_signer], None, cfg.val_size, cfg.seed, "signer")
    else:
        raise ValueError(
            f"unknown split.strategy {cfg.strategy!r}; known: stratified, kfold, by_session, by_signer"
        )
    out = {p: sorted(int(i) for i in parts[p] if eps[i].reason is None) for p in PARTS}
    empty = [p for p in PARTS if not out[p]]
    if empty:
        raise ValueError(f"split.strategy={cfg.strategy} leaves no usable episode in: {', '.join(empty)}")
    return out


def fit_scaler(values: list[np.ndarray], channels: list[str]) -> dict:
    """Per-channel mean and standard deviation over real steps only (as sklearn's StandardScaler)."""
    steps = np.concatenate(values).astype(np.float64)
    std = steps.std(axis=0)
    return {
        "channels": list(channels),
        "mean": steps.mean(axis=0).tolist(),
        "scale": np.where(std > 0, std, 1.0).tolist(),
        "n_samples_seen": int(len(steps)),
    }


def to_arrays(
    values: list[np.ndarray], scaler: dict, seq_len: int, padding: dict
) -> tuple[np.ndarray, np.ndarray]:
    """Cut or pad at the end to seq_len and scale, with lengths of the real steps.

    padding["units"] says where padding["value"] lives: "scaled" pads after scaling (the default);
    "raw" pads in sensor units and scales the padded steps too, as upstream did.
    """
    if padding["units"] not in ("scaled", "raw"):
        raise ValueError(f"padding units must be 'scaled' or 'raw', not {padding['units']!r}")
    mean, scale = np.asarray(scaler["mean"]), np.asarray(scaler["scale"])
    raw = padding["units"] == "raw"
    x = np.full((len(values), seq_len, len(mean)), padding["value"], dtype=np.float64)
    lengths = np.zeros(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        n = min(len(v), seq_len)
        x[i, :n] = v[:n] if raw else (v[:n] - mean) / scale
        lengths[i] = n
    if raw:
        x = (x - mean) / scale
    return x.astype(np.float32), lengths


def prepare(cfg_data, cfg_split) -> Prepared:
    """The whole data path of one run: corpus -> split -> scaler (train only) -> arrays."""
    root = ensure_unpacked(cfg_data.root, cfg_data.get("archive"))
    corpus = load_corpus(
        root,
        list(cfg_data.classes),
        list(cfg_data.channels),
        cfg_data.min_len,
        cfg_data.signer_prefix,
        cfg_data.on_bad_file,
        cfg_data.get("cache_dir"),
    )
    parts = split(corpus, cfg_split)
    eps = corpus.episodes
    scaler = fit_scaler([eps[i].values for i in parts["train"]], corpus.channels)
    prepared = Prepared(corpus, parts, scaler, cfg_data.seq_len)
    for part, idx in parts.items():
        x, lengths = to_arrays([eps[i].values for i in idx], scaler, cfg_data.seq_len, cfg_data.padding)
        prepared.arrays[part] = (x, lengths, np.array([eps[i].label for i in idx], dtype=np.int64))
    return prepared


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
    scaler = out_dir / "scaler.json"
    scaler.write_text(json.dumps(prepared.scaler, indent=2, ensure_ascii=False), encoding="utf-8")
    return [bad, manifest, counts, scaler]
