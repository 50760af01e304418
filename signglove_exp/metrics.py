"""Classification metrics, the same for validation, test and evaluation runs, and their summary over runs."""

from __future__ import annotations

import numpy as np


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Plain accuracy next to upstream's 'accuracy' (balanced) and the macro scores, as scikit-learn's
    scorers give them (tests hold the two equal); numpy here, so reading a model imports no sklearn
    (1 s of a calibrating person's wait).

    Macro scores average over the classes present in the truth: a class the data does not hold has
    no recall to average, and counting it as 0 would report a wrong number (so recall_macro is always
    balanced_acc). A class predicted but absent from the truth still lowers accuracy and the
    precision of nothing else. A class never predicted has precision 0.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = np.unique(y_true)
    hits = np.array([np.sum((y_true == c) & (y_pred == c)) for c in present], dtype=float)
    support = np.array([np.sum(y_true == c) for c in present], dtype=float)
    predicted = np.array([np.sum(y_pred == c) for c in present], dtype=float)
    recall = hits / support
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    return {
        "acc": float(np.mean(y_true == y_pred)),
        "balanced_acc": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
    }


def summarise(values: list[float]) -> dict:
    """Mean, sample std and the t-based 95% interval of the mean (nan where n < 2)."""
    from scipy import stats

    a = np.asarray(values, dtype=float)
    n = len(a)
    std = float(a.std(ddof=1)) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n)) if n > 1 else float("nan")
    return {
        "n": n,
        "mean": float(a.mean()),
        "std": std,
        "lo": float(a.mean()) - half,
        "hi": float(a.mean()) + half,
    }
