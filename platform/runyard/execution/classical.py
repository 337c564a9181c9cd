"""A classical (scikit-learn) training: one fit, in the `runyard train` process.

No Ray here, by choice: a scikit-learn fit on these datasets takes seconds and has
no epochs, gradients or workers to distribute, so Ray Train's workers, DDP and
checkpoints have nothing to add, and starting Ray would cost more than the fit.
The estimators use this machine's cores themselves where they can (forests and
boosting: threads). The MLflow run, lineage and outputs are the deep models' own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from runyard.config import Experiment
from runyard.data.splits import Splits
from runyard.models import build_estimator
from runyard.models.classical import flatten

# The `runyard.ray.address` lineage tag of a classical run: Ray took no part in it.
RAY_ADDRESS = "none (scikit-learn fit in the runyard process)"


@dataclass
class ClassicalFit:
    estimator: Any
    metrics: dict[str, float]
    """``train/acc`` and ``val/acc`` of the fitted estimator."""
    seconds: float
    """Wall-clock time of ``fit`` alone."""


def fit(exp: Experiment, splits: Splits, seed: int) -> ClassicalFit:
    estimator = build_estimator(exp.model, seed)
    x_train = flatten(splits.x_train)
    start = time.perf_counter()
    estimator.fit(x_train, splits.y_train)
    seconds = time.perf_counter() - start
    metrics = {
        "train/acc": accuracy(estimator, x_train, splits.y_train),
        "val/acc": accuracy(estimator, flatten(splits.x_val), splits.y_val),
    }
    return ClassicalFit(estimator, metrics, seconds)


def accuracy(estimator, x: np.ndarray, y: np.ndarray) -> float:
    return float((estimator.predict(x) == y).mean())
