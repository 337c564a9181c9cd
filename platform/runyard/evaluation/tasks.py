"""Per-task test evaluation: metrics, figures and tables for one model's test outputs.

``EVALUATORS`` maps a dataset's task to a function that writes its files into a
staging dir and returns the test metrics. A new task is one function and one entry.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np

from runyard.data import DatasetInfo
from runyard.data.splits import Splits
from runyard.evaluation import metrics as test_metrics
from runyard.evaluation import plots


def classification(name: str, info: DatasetInfo, splits: Splits, out: np.ndarray, staging: Path) -> dict:
    pred = out.argmax(1)
    values, cm = test_metrics.classification(splits.y_test, pred, info.num_classes)
    plots.confusion(cm, f"{name}: test confusion", staging / "confusion.png")
    write_csv(staging / "confusion.csv", ["actual", "predicted"],
              zip(splits.y_test.tolist(), pred.tolist(), strict=True))
    return values


def regression(name: str, info: DatasetInfo, splits: Splits, out: np.ndarray, staging: Path) -> dict:
    values = test_metrics.regression(splits.y_test, out)
    plots.fit(splits.x_test, splits.y_test, out, f"{name}: fit", staging / "fit.png")
    write_csv(staging / "fit.csv", ["x", "target", "prediction"],
              zip(splits.x_test.ravel().tolist(), splits.y_test.ravel().tolist(),
                  out.ravel().tolist(), strict=True))
    return values


MASK_SAMPLES = 8
"""Test images shown in the segmentation grid (the first ones of the split)."""


def segmentation(name: str, info: DatasetInfo, splits: Splits, out: np.ndarray, staging: Path) -> dict:
    pred = out.argmax(1)
    values, cm = test_metrics.segmentation(splits.y_test, pred, info.num_classes)
    k = MASK_SAMPLES
    plots.masks(splits.x_test[:k], splits.y_test[:k], pred[:k], info.num_classes,
                f"{name}: test inputs, true and predicted masks", staging / "masks.png")
    plots.confusion(cm, f"{name}: test pixels (rows true, columns predicted)", staging / "confusion.png")
    return values


Evaluator = Callable[[str, DatasetInfo, Splits, np.ndarray, Path], dict]

EVALUATORS: dict[str, Evaluator] = {
    "classification": classification,
    "regression": regression,
    "segmentation": segmentation,
}


def write_csv(path: Path, header: list[str], rows) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
