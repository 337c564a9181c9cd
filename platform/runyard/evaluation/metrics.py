"""Test metrics for classifiers, regressors and segmenters.

The overlap measures of segmentation (IoU, Dice) are torch functions, so training
(``SegmenterSystem``) and the test evaluation compute them the same way.
"""

from __future__ import annotations

import numpy as np
import torch


def classification(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

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
    from sklearn.metrics import mean_squared_error

    return {"test/mse": float(mean_squared_error(y_true, y_pred))}


def segmentation(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[dict, np.ndarray]:
    """Mean IoU and Dice over the shape classes, pixel accuracy, and the pixel confusion matrix."""
    cm = pixel_confusion(torch.from_numpy(y_true), torch.from_numpy(y_pred), num_classes)
    iou, dice = overlap(cm)
    return {
        "test/iou": iou.item(),
        "test/dice": dice.item(),
        "test/pixel_acc": (cm.diagonal().sum() / cm.sum()).item(),
    }, cm.numpy()


def pixel_confusion(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) pixel counts: rows the true class, columns the predicted."""
    pairs = y_true.reshape(-1).long() * num_classes + y_pred.reshape(-1).long()
    return torch.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)


def overlap(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean IoU and mean Dice over the foreground classes 1.. of a pixel confusion matrix.

    Per class k, with T the pixels truly k and P those predicted k:
    IoU = |T & P| / |T | P| and Dice = 2 |T & P| / (|T| + |P|). A class that is neither
    in the truth nor in the prediction says nothing and is left out of the means; if
    every class is left out (all background, predicted so), both are 1. Class 0, the
    background, is never averaged in: it would flatter a net that finds no shape.
    """
    cm = cm.double()
    hits = cm.diagonal()[1:]
    sizes = (cm.sum(0) + cm.sum(1))[1:]  # |T| + |P|
    seen = sizes > 0
    if not seen.any():
        one = torch.ones((), dtype=torch.float32, device=cm.device)
        return one, one
    hits, sizes = hits[seen], sizes[seen]
    iou = (hits / (sizes - hits)).mean()
    dice = (2 * hits / sizes).mean()
    return iou.float(), dice.float()
