"""Split strategies, a registry: `split.strategy` names one, `split(corpus, cfg)` runs it.

A strategy maps (episode labels, the corpus, the split config) to train/val/test index arrays over
every labelled episode; rejected episodes are dropped afterwards so that none moves another. To add
one, decorate a function with `@strategy("name")` and add `conf/split/<name>.yaml`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from signglove_exp import registrar
from signglove_exp.data.corpus import Corpus

PARTS = ("train", "val", "test")
Strategy = Callable[[np.ndarray, Corpus, object], dict[str, np.ndarray]]
STRATEGIES: dict[str, Strategy] = {}
strategy = registrar(STRATEGIES)


def _carve_val(
    idx: np.ndarray, labels: np.ndarray, val_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split  # here: reading a model needs no sklearn (1 s)

    train, val = train_test_split(idx, test_size=val_size, stratify=labels[idx], random_state=seed)
    return train, val


@strategy("stratified")
def split_stratified(labels: np.ndarray, corpus: Corpus, cfg) -> dict[str, np.ndarray]:
    """Upstream's two calls to train_test_split, so the reference partition is reproduced exactly."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=cfg.test_size, stratify=labels, random_state=cfg.seed)
    train, val = _carve_val(rest, labels, cfg.val_size, cfg.seed)
    return {"train": train, "val": val, "test": test}


@strategy("kfold")
def split_kfold(labels: np.ndarray, corpus: Corpus, cfg) -> dict[str, np.ndarray]:
    """Fold `fold` of a stratified k-fold is the test part; validation is carved from the other folds."""
    if not 0 <= cfg.fold < cfg.n_folds:
        raise ValueError(
            f"split.fold={cfg.fold} is outside 0..{cfg.n_folds - 1} (split.n_folds={cfg.n_folds})"
        )
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(n_splits=cfg.n_folds, shuffle=True, random_state=cfg.seed).split(labels, labels)
    rest, test = list(folds)[cfg.fold]
    train, val = _carve_val(rest, labels, cfg.val_size, cfg.seed)
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


@strategy("by_session")
def split_by_session(labels: np.ndarray, corpus: Corpus, cfg) -> dict[str, np.ndarray]:
    """Session k of every signer: a whole recording block held out."""
    sessions = np.array([e.session for e in corpus.episodes])
    val_sessions = [str(v) for v in cfg.val_sessions] if cfg.val_sessions else None
    test_sessions = [str(v) for v in cfg.test_sessions]
    return split_by_group(labels, sessions, test_sessions, val_sessions, cfg.val_size, cfg.seed, "session")


@strategy("by_signer")
def split_by_signer(labels: np.ndarray, corpus: Corpus, cfg) -> dict[str, np.ndarray]:
    """Leave one signer out; validation is a stratified carve of the others, or their session folders
    `val_sessions` (a hand-shape variant none of training has: a new condition, as a person is)."""
    signers = np.array([e.signer for e in corpus.episodes])
    parts = split_by_group(labels, signers, [cfg.test_signer], None, cfg.val_size, cfg.seed, "signer")
    if not cfg.get("val_sessions"):
        return parts
    sessions = np.array([e.session for e in corpus.episodes])
    val_sessions = [str(v) for v in cfg.val_sessions]
    known = sorted(set(sessions[signers != cfg.test_signer].tolist()))
    for v in val_sessions:
        if v not in known:
            raise ValueError(
                f"split.val_sessions: session {v!r} is not in the data; known: {', '.join(known)}"
            )
    rest = np.concatenate([parts["train"], parts["val"]])
    held = np.isin(sessions[rest], val_sessions)
    return {"train": np.sort(rest[~held]), "val": np.sort(rest[held]), "test": parts["test"]}


def draw_shots(labels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Few-shot draw: k episodes of each class (all of a class with fewer) calibrate, the rest test.
    The same seed draws the same episodes; the two parts never share one."""
    if k < 1:
        raise ValueError(f"shots={k}: at least 1 labelled episode per class")
    rng = np.random.default_rng(seed)
    calib = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c in np.unique(labels)])
    )
    return calib, np.setdiff1d(np.arange(len(labels)), calib)


def halves(indices: np.ndarray, seed: int) -> list[np.ndarray]:
    """The episodes a draw did not take, cut in two halves in a seeded random order: one is read
    without labels (`selftrain`) while the other measures, so no measured episode was read."""
    return np.array_split(np.random.default_rng(seed).permutation(indices), 2)


def duplicate_copies(corpus: Corpus) -> dict[int, int]:
    """Byte-identical episode files: index of each copy -> index of the first file with its content."""
    first: dict[str, int] = {}
    copies = {}
    for i, e in enumerate(corpus.episodes):
        if e.reason is None and e.digest:
            j = first.setdefault(e.digest, i)
            if j != i:
                copies[i] = j
    return copies


def split(corpus: Corpus, cfg) -> dict[str, list[int]]:
    """Split every labelled episode, rejected ones included so none moves another; then drop those.

    Byte-identical copies of an episode follow it into its part, so no copy is tested on that was
    trained on (they are listed in the run's duplicates.tsv)."""
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"unknown split.strategy {cfg.strategy!r}; known: {', '.join(STRATEGIES)}")
    eps = corpus.episodes
    labels = np.array([e.label for e in eps])
    try:
        parts = STRATEGIES[cfg.strategy](labels, corpus, cfg)
    except ValueError as e:
        if "least populated class" not in str(e) and "number of members in each class" not in str(e):
            raise
        counts = np.bincount(labels, minlength=len(corpus.classes))
        present = counts[counts > 0]
        bound = max(5, present.min() + 1)  # name the classes with fewer than 5 episodes, or the smallest
        few = [f"{corpus.classes[k]} ({n} episodes)" for k, n in enumerate(counts) if 0 < n < bound]
        raise ValueError(
            f"split.strategy={cfg.strategy}: too few episodes to stratify for class(es) {', '.join(few)}; "
            "record more, or leave the class out of data.classes"
        ) from None
    part_of = {int(i): p for p in PARTS for i in parts[p]}
    for copy, original in duplicate_copies(corpus).items():
        part_of[copy] = part_of[original]
    out = {p: sorted(i for i, q in part_of.items() if q == p and eps[i].reason is None) for p in PARTS}
    empty = [p for p in PARTS if not out[p]]
    if empty:
        raise ValueError(f"split.strategy={cfg.strategy} leaves no usable episode in: {', '.join(empty)}")
    return out
