"""Classification metrics, the same for validation, test and evaluation runs."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_score, recall_score


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Plain accuracy next to upstream's 'accuracy' (balanced) and the macro scores."""
    labels = list(range(n_classes))
    macro = {"average": "macro", "labels": labels, "zero_division": 0}
    return {
        "acc": float(accuracy_score(y_true, y_pred)),
        "balanced_acc": float(balanced_accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, **macro)),
        "precision_macro": float(precision_score(y_true, y_pred, **macro)),
        "recall_macro": float(recall_score(y_true, y_pred, **macro)),
    }
