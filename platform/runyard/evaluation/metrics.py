"""Test metrics for classifiers and regressors."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, mean_squared_error, precision_recall_fscore_support


def classification(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    labels = list(range(num_classes))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    # Specificity per class = TN / (TN + FP); sklearn has no macro version of it.
    fp = cm.sum(0) - np.diag(cm)
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        specificity = np.nanmean(np.where(tn + fp > 0, tn / (tn + fp), np.nan))
    return {
        "test/acc": float((y_true == y_pred).mean()),
        "test/precision": float(precision),
        "test/recall": float(recall),
        "test/f1": float(f1),
        "test/specificity": float(specificity),
    }, cm


def regression(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    return {"test/mse": float(mean_squared_error(y_true, y_pred))}
