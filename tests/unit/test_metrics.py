"""Test-split metrics: a hand-checked 3-class example, absent classes, regression MSE."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from runyard.evaluation.metrics import classification, regression

# cm (rows = actual, cols = predicted):
#   [[1, 1, 0],
#    [0, 2, 0],
#    [1, 0, 1]]
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 0, 2])
CM = [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
# per class: TP = [1, 2, 1], FP = [1, 1, 0], FN = [1, 0, 1], TN = [3, 3, 4]
SPECIFICITY = np.mean([3 / 4, 3 / 4, 4 / 4])
PRECISION = np.mean([1 / 2, 2 / 3, 1 / 1])
RECALL = np.mean([1 / 2, 2 / 2, 1 / 2])
F1 = np.mean([1 / 2, 4 / 5, 2 / 3])


def test_classification_hand_example():
    values, cm = classification(Y_TRUE, Y_PRED, num_classes=3)
    assert set(values) == {"test/acc", "test/precision", "test/recall", "test/f1",
                           "test/specificity"}
    assert all(type(v) is float for v in values.values())
    assert values["test/acc"] == pytest.approx(4 / 6)
    assert values["test/precision"] == pytest.approx(PRECISION)
    assert values["test/recall"] == pytest.approx(RECALL)
    assert values["test/f1"] == pytest.approx(F1)
    assert values["test/specificity"] == pytest.approx(SPECIFICITY)
    assert cm.tolist() == CM


def test_classification_matches_sklearn_macro():
    values, _ = classification(Y_TRUE, Y_PRED, num_classes=3)
    assert values["test/precision"] == pytest.approx(precision_score(Y_TRUE, Y_PRED, average="macro"))
    assert values["test/recall"] == pytest.approx(recall_score(Y_TRUE, Y_PRED, average="macro"))
    assert values["test/f1"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))


def test_random_example_matches_sklearn_and_definition():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    values, cm = classification(y_true, y_pred, num_classes=5)
    assert values["test/f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    spec = []
    for k in range(5):
        tn = np.sum((y_true != k) & (y_pred != k))
        fp = np.sum((y_true != k) & (y_pred == k))
        spec.append(tn / (tn + fp))
    assert values["test/specificity"] == pytest.approx(np.mean(spec))
    assert cm.sum() == 200 and np.trace(cm) == np.sum(y_true == y_pred)


def test_class_never_predicted_keeps_full_confusion_matrix():
    y_true = np.array([0, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1])  # class 2 never predicted
    values, cm = classification(y_true, y_pred, num_classes=3)
    assert cm.shape == (3, 3)
    assert cm[:, 2].sum() == 0 and cm[2, 1] == 2
    # Precision of class 2 counts as 0 (no division warning), like sklearn's zero_division=0.
    assert values["test/precision"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert values["test/recall"] == pytest.approx((1 + 1 + 0) / 3)
    # specificity: class 0: 3/3, class 1: 1/3, class 2: 2/2
    assert values["test/specificity"] == pytest.approx((1 + 1 / 3 + 1) / 3)


def test_num_classes_larger_than_seen():
    y = np.array([0, 1, 1, 0])
    values, cm = classification(y, y, num_classes=10)
    assert cm.shape == (10, 10)
    assert cm[:2, :2].tolist() == [[2, 0], [0, 2]] and cm[2:].sum() == 0
    assert values["test/acc"] == 1.0
    assert values["test/specificity"] == 1.0


def test_all_wrong():
    values, _ = classification(np.array([0, 1, 2]), np.array([1, 2, 0]), num_classes=3)
    assert values["test/acc"] == 0.0
    assert values["test/f1"] == 0.0
    assert values["test/specificity"] == pytest.approx(0.5)  # each class: TN 1, FP 1


def test_regression_mse():
    y_true = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32)
    y_pred = np.array([[0.0], [2.0], [0.0], [3.5]], dtype=np.float32)
    values = regression(y_true, y_pred)
    assert set(values) == {"test/mse"}
    assert type(values["test/mse"]) is float
    assert values["test/mse"] == pytest.approx((0 + 1 + 4 + 0.25) / 4)
    assert regression(y_true, y_true)["test/mse"] == 0.0


@pytest.mark.parametrize("features, header", [(1, "x,target,prediction"), (5, "target,prediction")])
def test_regression_evaluation_draws_a_table_of_several_inputs_too(tmp_path, features, header):
    """One input (regression1d): the fit over x; a table's several columns: predictions against targets."""
    from runyard import tasks
    from runyard.data import DatasetInfo
    from runyard.data.splits import Splits

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, features)).astype(np.float32)
    y = x.sum(1, keepdims=True)
    splits = Splits(x, y, x, y, x, y)
    info = DatasetInfo(task="regression", input_shape=(features,))
    values = tasks.get("regression").evaluate("t", info, splits, y + 0.5, tmp_path, None)
    assert values["test/mse"] == pytest.approx(0.25)
    assert (tmp_path / "fit.png").stat().st_size > 0
    lines = (tmp_path / "fit.csv").read_text().splitlines()
    assert lines[0] == header and len(lines) == 13
