"""Classification metrics, the same for validation, test and evaluation runs, and their summary over runs."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_score, recall_score


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Plain accuracy next to upstream's 'accuracy' (balanced) and the macro scores.

    Macro scores average over the classes present in the truth: a class the data does not hold has
    no recall to average, and counting it as 0 would report a wrong number (so recall_macro is always
    balanced_acc). A class predicted but absent from the truth still lowers accuracy and the
    precision of nothing else.
    """
    present = np.unique(y_true).tolist()
    macro = {"average": "macro", "labels": present, "zero_division": 0}
    with warnings.catch_warnings():  # predicting a class the truth lacks is what a wrong model does
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return {
            "acc": float(accuracy_score(y_true, y_pred)),
            "balanced_acc": float(balanced_accuracy_score(y_true, y_pred)),
            "f1_macro": float(f1_score(y_true, y_pred, **macro)),
            "precision_macro": float(precision_score(y_true, y_pred, **macro)),
            "recall_macro": float(recall_score(y_true, y_pred, **macro)),
        }


def summarise(values: list[float]) -> dict:
    """Mean, sample std and the t-based 95% interval of the mean (nan where n < 2)."""
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
