"""Test metrics for classifiers, regressors, segmenters and detectors.

The overlap measures of segmentation (IoU, Dice) are torch functions, so training
(``runyard.tasks.segmentation``) and the test evaluation compute them the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from runyard.evaluation.boxes import decode, iou_and_giou, pairwise, xyxy


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


def detection(y_true: np.ndarray, out: np.ndarray, num_classes: int) -> dict:
    """mAP at IoU 0.5 (the detection task's main number) and at the stricter 0.75."""
    return {f"test/map{round(100 * t)}": mean_average_precision(y_true, out, num_classes, iou_threshold=t)
            for t in (0.5, 0.75)}


def mean_average_precision(y_true: np.ndarray, out: np.ndarray, num_classes: int, iou_threshold: float) -> float:
    """PASCAL VOC's mAP: the mean over object classes of the average precision.

    ``y_true`` are padded targets (images, max_objects, 5), rows (class, cx, cy, w, h),
    class -1 for padding; ``out`` a detector's outputs (images, queries, classes + 5).
    Every query is a detection of its likeliest class, scored by that class's
    probability. Per class, detections are taken from the highest score down; each
    claims the unclaimed true box of its class in its image that it overlaps most, if
    their IoU reaches ``iou_threshold`` (a true positive), and is a false positive
    otherwise (a second box on a claimed object among them). AP is the area under the
    precision-recall curve with precision made non-increasing (VOC 2010 on: all
    points, no 11-point sampling). Classes with no true box are left out of the mean;
    with none at all the mAP is 0.
    """
    scores, labels, boxes = decode(out)
    true_class = y_true[..., 0].astype(np.int64)
    iou, _ = pairwise(iou_and_giou, torch.from_numpy(boxes), xyxy(torch.from_numpy(y_true[..., 1:]).float()))
    iou = iou.numpy()  # (images, queries, max_objects)
    aps = []
    for c in range(num_classes):
        truth = true_class == c
        if not truth.any():
            continue
        image, query = np.nonzero(labels == c)
        order = np.argsort(-scores[image, query], kind="stable")
        claimed = np.zeros_like(truth)
        hit = np.zeros(len(order), bool)
        for rank, d in enumerate(order):
            i = image[d]
            overlap = np.where(truth[i] & ~claimed[i], iou[i, query[d]], -1.0)
            best = int(overlap.argmax())
            if overlap[best] >= iou_threshold:
                hit[rank] = claimed[i, best] = True
        aps.append(average_precision(hit, int(truth.sum())))
    return float(np.mean(aps)) if aps else 0.0


def average_precision(hit: np.ndarray, positives: int) -> float:
    """Area under the precision-recall curve of detections ranked best first (``hit``:
    which are true positives), precision made non-increasing in recall."""
    tp = np.cumsum(hit)
    recall = np.concatenate([[0.0], tp / positives, [1.0]])
    precision = np.concatenate([[0.0], tp / np.arange(1, len(hit) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * precision[1:]))
