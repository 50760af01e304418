"""Classification metrics, the same for validation, test and evaluation runs."""

from __future__ import annotations

import warnings

import numpy as np
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
