"""k-fold cross-validation over train + val (the test split stays untouched).

``runyard train`` runs the folds as parallel Ray tasks before the final training
and logs each fold's metrics, their mean and their standard deviation. A search
can use the mean as its objective: each trial then runs its folds in turn and
reports the running mean after each, so ASHA may stop a poor trial after one fold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runyard.config import Experiment
from runyard.data import DatasetInfo
from runyard.data.splits import Splits


def folds(splits: Splits, k: int, seed: int, task: str) -> list[Splits]:
    """k splits whose val parts partition train + val (stratified for classification)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    x = np.concatenate([splits.x_train, splits.x_val])
    y = np.concatenate([splits.y_train, splits.y_val])
    stratified = task == "classification"
    kind = StratifiedKFold if stratified else KFold
    parts = kind(n_splits=k, shuffle=True, random_state=seed).split(x, y if stratified else None)
    return [Splits(x[tr], y[tr], x[va], y[va], splits.x_test, splits.y_test) for tr, va in parts]


def fit_fold(exp: Experiment, info: DatasetInfo, fold: Splits, seed: int, cpus: float) -> dict[str, float]:
    """Train on one fold; its final val/* metrics."""
    # Runs on a Ray worker: the driver never imports Lightning.
    from runyard.execution.local import fit_local

    trainer = fit_local(exp, info, fold, seed=seed, cpus=cpus)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def cross_validate(exp: Experiment, info: DatasetInfo, splits: Splits, *, seed: int, cpus: float) -> list[dict]:
    """Every fold as its own Ray task, in parallel as far as the cluster's CPUs allow."""
    import ray

    task = ray.remote(num_cpus=cpus)(fit_fold)
    return ray.get([task.remote(exp, info, f, seed, cpus) for f in folds(splits, exp.cv.folds, seed, info.task)])


def summarise(results: list[dict[str, float]]) -> dict[str, Any]:
    """``cv/val/acc`` (mean) and ``cv/val/acc_std`` for every metric the folds report."""
    keys = sorted(set.intersection(*(set(r) for r in results)))
    out = {}
    for key in keys:
        values = np.array([r[key] for r in results])
        out[f"cv/{key}"] = float(values.mean())
        out[f"cv/{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out
