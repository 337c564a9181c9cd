"""What one experiment sees of its prepared dataset: a class subset, a few labels per
class, or the inputs themselves as targets.

The prepared data (``data/<dataset>/``, one DVC output) stays whole; a pipeline picks
its view with ``subset:`` and ``task:``, so a pretraining on digits 0-4 and a
fine-tuning on a few examples of 5-9 read the same files. Applied on load by the
train, evaluate and tune stages alike, and to the dataset's info when the pipeline
is checked.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from runyard.data import DatasetInfo
from runyard.data.splits import SPLITS, Splits

if TYPE_CHECKING:
    from runyard.config import Experiment


def view_info(info: DatasetInfo, exp: Experiment) -> DatasetInfo:
    """The task and shapes the experiment trains on."""
    if exp.task == "reconstruction":
        return DatasetInfo(task="reconstruction", input_shape=tuple(info.input_shape))
    if exp.subset is not None:
        return replace(info, num_classes=len(exp.subset.classes))
    return info


def view_splits(splits: Splits, exp: Experiment) -> Splits:
    """The splits the experiment trains and is scored on."""
    if exp.subset is not None:
        splits = subset(splits, exp.subset.classes, exp.subset.train_per_class)
    if exp.task == "reconstruction":
        splits = Splits(*(a for s in SPLITS for a in (getattr(splits, f"x_{s}"),) * 2))
    return splits


def subset(splits: Splits, classes: list[int], train_per_class: int | None) -> Splits:
    """Only the samples of ``classes``, relabelled 0..k-1 in the order given; of the
    training split, the first ``train_per_class`` of each class (the splits are
    shuffled already, so these are a random draw fixed by the dataset's seed).
    Validation and test keep every sample of those classes."""
    top = max(int(getattr(splits, f"y_{s}").max(initial=0)) for s in SPLITS)
    lookup = np.full(max(top, *classes) + 1, -1, np.int64)
    lookup[classes] = np.arange(len(classes))
    arrays = []
    for s in SPLITS:
        x, y = getattr(splits, f"x_{s}"), getattr(splits, f"y_{s}")
        keep = np.isin(y, classes)
        if s == "train" and train_per_class is not None:
            rank = np.zeros(len(y), np.int64)  # how many of the same class come before
            for c in classes:
                idx = np.flatnonzero(y == c)
                rank[idx] = np.arange(len(idx))
            keep &= rank < train_per_class
        arrays += [x[keep], lookup[y[keep]]]
    return Splits(*arrays)
