"""Episode CSVs -> a corpus of labelled, validated episodes (records + bad-file report), cached.

A jamo label is born here, in `load_corpus`: the class folder's index in `data.classes`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import unicodedata
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import numpy as np

CACHE_VERSION = 3  # bump when parsing rules change, so old caches are not reused


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
    digest: str = ""  # sha256 of the file's bytes: byte-identical copies share it


@dataclass
class Corpus:
    root: Path
    classes: list[str]
    channels: list[str]
    episodes: list[Episode]  # every file with a known class, in upstream order, rejected ones included
    unlabelled: list[tuple[str, str]]  # (path, reason) of files whose class folder is not a known class
    fingerprint: str  # sha256 over every episode file's relative path and bytes
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): folders or links not read

    @property
    def rejected(self) -> list[tuple[str, str]]:
        return [(e.path, e.reason) for e in self.episodes if e.reason] + self.unlabelled + self.problems


def ensure_unpacked(cfg_data) -> Path:
    """data.root, with the bundled archive unpacked on first use when the root is `data.unpack_to`
    (the default); any other root is used as it is, and a missing one is an error, never filled."""
    root, archive, home = Path(cfg_data.root), cfg_data.get("archive"), cfg_data.get("unpack_to")
    if root.is_dir():
        return root
    if not (archive and home and root.resolve() == Path(home).resolve() and Path(archive).is_file()):
        raise FileNotFoundError(f"data.root {root} does not exist")
    print(f"Unpacking {archive} into {root} (first use) ...", flush=True)
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


def read_bytes(path: Path) -> tuple[bytes | None, str | None]:
    """A file's bytes, or why not: a FIFO, device, dangling or looping link is never opened (it could
    block forever or fail), an unreadable file is reported."""
    if not path.is_file():
        return None, "not a regular file (a FIFO, device, or a dangling or looping link)"
    try:
        return path.read_bytes(), None
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"


def read_episode(path: Path, channels: list[str], min_len: int) -> tuple[np.ndarray | None, str | None]:
    """Parse one episode CSV into (n_timepoints, n_channels), or say why it cannot be used."""
    raw, reason = read_bytes(path)
    return (None, reason) if reason else parse_episode(raw, channels, min_len)


def parse_episode(raw: bytes, channels: list[str], min_len: int) -> tuple[np.ndarray | None, str | None]:
    try:  # utf-8-sig: a byte-order mark before the first column name is not part of it
        rows = [r for r in csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")) if r]
    except (UnicodeDecodeError, csv.Error) as e:
        return None, f"unreadable: {e}"
    if not rows:
        return None, "empty file"
    header = [h.strip() for h in rows[0]]
    missing = [c for c in channels if c not in header]
    if missing:
        return None, f"missing column(s) {', '.join(missing)}"
    doubled = [c for c in channels if header.count(c) > 1]
    if doubled:
        return None, f"column(s) {', '.join(doubled)} appear more than once in the header"
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


def find_episode_files(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Every `episode_*.csv` under root at any depth, following linked folders that stay inside root
    (each real folder once). A link back to a folder already read, and a link that leads out of root
    (to `/`, say: the loader would read the whole machine), are reported, not followed."""
    files, problems, seen = [], [], set()
    inside = os.path.realpath(root)

    def out_of_root(path: Path) -> bool:
        real = os.path.realpath(path)
        return os.path.commonpath([real, inside]) != inside

    for folder, subfolders, names in os.walk(root, followlinks=True):
        here = Path(folder)
        real = os.path.realpath(folder)
        if real in seen:
            problems.append((here.relative_to(root).as_posix(), "a link to a folder already read: skipped"))
            subfolders[:] = []
            continue
        seen.add(real)
        for name in [n for n in subfolders if out_of_root(here / n)]:
            problems.append(
                ((here / name).relative_to(root).as_posix(), "a link out of data.root: not followed")
            )
            subfolders.remove(name)
        for name in (n for n in names if fnmatch(n, "episode_*.csv")):
            if (here / name).is_symlink() and out_of_root(here / name):  # only a link can lead out
                problems.append(
                    ((here / name).relative_to(root).as_posix(), "a link out of data.root: not read")
                )
            else:
                files.append(here / name)
    return sorted(files), problems


def fingerprint_files(root: Path, files: list[Path]) -> str:
    """sha256 over every file's relative path and bytes (a file that cannot be read counts as such)."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode())
        raw, reason = read_bytes(f)
        h.update(raw if raw is not None else f"<{reason}>".encode())
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
    files, problems = find_episode_files(root)
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
        if cache:
            print(f"Reading {len(files)} episode files (once; then from {cache.parent}) ...", flush=True)
        corpus = _parse(root, files, classes, channels, min_len, signer_prefix, fingerprint)
        if cache:
            _write_cache(cache, corpus)
    corpus.problems = problems
    if on_bad_file == "raise" and corpus.rejected:
        path, reason = corpus.rejected[0]
        raise BadEpisodeError(f"{root / path}: {reason} (set data.on_bad_file=skip to skip such files)")
    return corpus


def unknown_class(name: str, classes: list[str]) -> str:
    """Why a class folder is not a class, with code points: a look-alike (conjoining U+1100 for the
    compatibility jamo U+3131) prints exactly like the class it is not."""

    def codes(text: str) -> str:
        return " ".join(f"U+{ord(ch):04X}" for ch in text)

    reason = f"class folder {name!r} ({codes(name)}) is not in data.classes"
    similar = [c for c in classes if unicodedata.normalize("NFKC", c) == unicodedata.normalize("NFKC", name)]
    return reason + (f"; it looks like {similar[0]!r} ({codes(similar[0])}), which is" if similar else "")


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
            unlabelled.append((rel.as_posix(), unknown_class(jamo, classes)))
            continue
        signer = rel.parts[0].removeprefix(signer_prefix) if len(rel.parts) >= 4 else ""
        raw, reason = read_bytes(f)
        values, reason = (None, reason) if reason else parse_episode(raw, channels, min_len)
        digest = hashlib.sha256(raw).hexdigest() if raw is not None else ""
        episodes.append(
            Episode(rel.as_posix(), jamo, index[jamo], signer, rel.parts[-2], values, reason, digest)
        )
    episodes.sort(key=lambda e: (e.label, _natural(e.session), Path(e.path).name))
    return Corpus(root, list(classes), list(channels), episodes, unlabelled, fingerprint)


def _write_cache(path: Path, corpus: Corpus) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "episodes": [
            [e.path, e.jamo, e.label, e.signer, e.session, e.reason, e.digest] for e in corpus.episodes
        ],
        "unlabelled": corpus.unlabelled,
    }
    used = [e.values for e in corpus.episodes if e.values is not None]
    values = np.concatenate(used) if used else np.zeros((0, len(corpus.channels)))
    lengths = np.array([len(v) for v in used], dtype=np.int64)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # renamed whole, never seen half-written
    try:
        with open(partial, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), values=values, lengths=lengths)
        partial.replace(path)
    except OSError as error:  # a full disk or a file-size limit: the cache only saves time
        partial.unlink(missing_ok=True)
        print(f"Episode cache {path} not written ({error.strerror or error}); going on without it")


def _read_cache(path: Path, root: Path, classes, channels, fingerprint) -> Corpus:
    with np.load(path, allow_pickle=False) as z:
        meta, values, lengths = json.loads(str(z["meta"])), z["values"], z["lengths"]
    chunks = iter(np.split(values, np.cumsum(lengths)[:-1]) if len(lengths) else [])
    episodes = [
        Episode(p, j, lab, s, sess, None if reason else next(chunks), reason, digest)
        for p, j, lab, s, sess, reason, digest in meta["episodes"]
    ]
    unlabelled = [tuple(u) for u in meta["unlabelled"]]
    return Corpus(root, list(classes), list(channels), episodes, unlabelled, fingerprint)
