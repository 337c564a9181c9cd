"""k-fold splitting and the summary of fold metrics."""

from __future__ import annotations

import numpy as np
import pytest

from runyard.data.splits import Splits
from runyard.execution.cv import folds, summarise


def toy_splits(n_train=40, n_val=20, classes=4) -> Splits:
    rng = np.random.default_rng(0)
    x = np.arange(n_train + n_val, dtype=np.float32)[:, None]
    y = rng.integers(0, classes, n_train + n_val)
    return Splits(x[:n_train], y[:n_train], x[n_train:], y[n_train:], x[:3], y[:3])


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_val_parts_partition_train_plus_val(task):
    s = toy_splits()
    parts = folds(s, 5, seed=0, task=task)
    assert len(parts) == 5
    seen = np.concatenate([p.x_val[:, 0] for p in parts])
    assert sorted(seen) == list(range(60)), "every sample validated exactly once"
    for p in parts:
        assert not set(p.x_val[:, 0]) & set(p.x_train[:, 0])
        assert len(p.x_train) + len(p.x_val) == 60
        assert p.x_test is s.x_test, "the test split is never used"


def test_classification_folds_are_stratified():
    s = toy_splits(n_train=400, n_val=100)
    overall = np.bincount(np.concatenate([s.y_train, s.y_val]), minlength=4) / 500
    for p in folds(s, 5, seed=1, task="classification"):
        assert np.abs(np.bincount(p.y_val, minlength=4) / len(p.y_val) - overall).max() < 0.03


def test_folds_depend_on_the_seed_only():
    s = toy_splits()
    a, b, c = (folds(s, 3, seed, "classification") for seed in (0, 0, 1))
    assert all(np.array_equal(x.x_val, y.x_val) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x.x_val, y.x_val) for x, y in zip(a, c, strict=True))


def test_summary_is_mean_and_sample_std():
    out = summarise([{"val/acc": 0.5, "val/loss": 1.0}, {"val/acc": 0.7, "val/loss": 2.0}, {"val/acc": 0.9}])
    assert out["cv/val/acc"] == pytest.approx(0.7)
    assert out["cv/val/acc_std"] == pytest.approx(0.2)
    assert "cv/val/loss" not in out, "only metrics every fold reports"
