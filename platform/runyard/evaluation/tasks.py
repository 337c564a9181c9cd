"""Per-task test evaluation: metrics, figures and tables for one model's test outputs.

``EVALUATORS`` maps a dataset's task to a function that writes its files into a
staging dir and returns the test metrics. A new task is one function and one entry.
Each gets the test outputs, and ``predict`` for any other inputs it wants to show
(the node classifier draws the whole graph, train and validation nodes included).
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
from runyard.evaluation.generation import evaluate as generation

Predict = Callable[[np.ndarray], np.ndarray]
"""The trained model's outputs for a batch of inputs of the dataset's shape."""


def classification(name: str, info: DatasetInfo, splits: Splits, out: np.ndarray, staging: Path,
                   predict: Predict) -> dict:
    pred = out.argmax(1)
    values, cm = test_metrics.classification(splits.y_test, pred, info.num_classes)
    plots.confusion(cm, f"{name}: test confusion", staging / "confusion.png")
    write_csv(staging / "confusion.csv", ["actual", "predicted"],
              zip(splits.y_test.tolist(), pred.tolist(), strict=True))
    return values


def node_classification(name: str, info: DatasetInfo, splits: Splits, out: np.ndarray, staging: Path,
                        predict: Predict) -> dict:
    """Classification metrics on the test nodes, plus the graph coloured by predicted class."""
    from runyard.data import graph_format

    values = classification(name, info, splits, out, staging, predict)
    x = np.concatenate([splits.x_train, splits.x_val, splits.x_test])
    roles = np.repeat(["train", "val", "test"], [len(splits.y_train), len(splits.y_val), len(splits.y_test)])
    n, f = graph_format.layout(x.shape[1:])
    real = x[0, :, n + f] > 0.5
    plots.graph_predictions(
        x[0, :, :n][np.ix_(real, real)], graph_format.query_nodes(x), predict(x).argmax(1),
        np.concatenate([splits.y_train, splits.y_val, splits.y_test]), roles,
        f"{name}: predicted class (test acc {values['test/acc']:.2f})", staging / "graph.png",
    )
    return values


def regression(name: str, info: DatasetInfo, splits: Splits, out: np.ndarray, staging: Path,
               predict: Predict) -> dict:
    values = test_metrics.regression(splits.y_test, out)
    plots.fit(splits.x_test, splits.y_test, out, f"{name}: fit", staging / "fit.png")
    write_csv(staging / "fit.csv", ["x", "target", "prediction"],
              zip(splits.x_test.ravel().tolist(), splits.y_test.ravel().tolist(),
                  out.ravel().tolist(), strict=True))
    return values


MASK_SAMPLES = 8
"""Test images shown in the segmentation grid (the first ones of the split)."""


def segmentation(name: str, info: DatasetInfo, splits: Splits, out: np.ndarray, staging: Path,
                 predict: Predict) -> dict:
    pred = out.argmax(1)
    values, cm = test_metrics.segmentation(splits.y_test, pred, info.num_classes)
    k = MASK_SAMPLES
    plots.masks(splits.x_test[:k], splits.y_test[:k], pred[:k], info.num_classes,
                f"{name}: test inputs, true and predicted masks", staging / "masks.png")
    plots.confusion(cm, f"{name}: test pixels (rows true, columns predicted)", staging / "confusion.png")
    return values


DENOISE_NOISE = 0.3
"""Std of the Gaussian noise on the test images a (denoising) autoencoder is scored on
(``test/mse_noisy``; the noisy images alone are at MSE 0.09 from the clean ones)."""


def reconstruction(name: str, info: DatasetInfo, splits: Splits, out: np.ndarray, staging: Path,
                   predict: Predict) -> dict:
    """MSE of the reconstructions of clean and of noisy test images (seeded noise), and a grid:
    noisy inputs, their reconstructions, the clean images."""
    clean = splits.x_test
    noisy = clean + DENOISE_NOISE * np.random.default_rng(0).standard_normal(clean.shape).astype(clean.dtype)
    denoised = predict(noisy)
    values = {"test/mse": float(np.mean((out - clean) ** 2)),
              "test/mse_noisy": float(np.mean((denoised - clean) ** 2))}
    if len(info.input_shape) == 3:  # images: show the first channel
        k, style = MASK_SAMPLES, {"cmap": "gray", "vmin": 0, "vmax": 1}
        plots.image_grid([(f"noisy ({DENOISE_NOISE})", noisy[:k, 0], style),
                          ("reconstructed", denoised[:k, 0], style), ("clean", clean[:k, 0], style)],
                         f"{name}: test mse {values['test/mse']:.4f}, from noisy {values['test/mse_noisy']:.4f}",
                         staging / "reconstructions.png")
    return values


BOX_SAMPLES = 8
"""Test images shown in the detection figure (the first ones of the split)."""
SCORE_SHOWN = 0.5
"""Detections drawn in the figure: those scored at least this (mAP counts them all)."""


def detection(name: str, info: DatasetInfo, splits: Splits, out: np.ndarray, staging: Path,
              predict: Predict) -> dict:
    """mAP at IoU 0.5 and 0.75; the first test images with true and detected boxes; every
    detection scored at least ``SCORE_SHOWN`` as a CSV (image, class, score, box)."""
    import torch

    from runyard.models.detection import decode, xyxy

    values = test_metrics.detection(splits.y_test, out, info.num_classes)
    scores, labels, boxes = decode(out)
    shown = scores >= SCORE_SHOWN
    detected = [np.column_stack([labels[i][keep], boxes[i][keep], scores[i][keep]]) for i, keep in enumerate(shown)]
    real = splits.y_test[..., 0] >= 0
    corners = xyxy(torch.from_numpy(splits.y_test[..., 1:])).numpy()
    true = [np.column_stack([splits.y_test[i, keep, 0], corners[i][keep]]) for i, keep in enumerate(real)]
    k = BOX_SAMPLES
    plots.detections(splits.x_test[:k], true[:k], detected[:k], info.num_classes,
                     f"{name}: true (dashed) and detected boxes, mAP@0.5 {values['test/map50']:.3f}",
                     staging / "boxes.png")
    write_csv(staging / "detections.csv", ["image", "class", "score", "x0", "y0", "x1", "y1"],
              ([i, int(d[0]), round(float(d[5]), 4), *(round(float(v), 4) for v in d[1:5])]
               for i, rows in enumerate(detected) for d in rows))
    return values


Evaluator = Callable[[str, DatasetInfo, Splits, np.ndarray, Path, Predict], dict]

EVALUATORS: dict[str, Evaluator] = {
    "classification": classification,
    "node_classification": node_classification,
    "regression": regression,
    "segmentation": segmentation,
    "reconstruction": reconstruction,
    "detection": detection,
    "generation": generation,
}


def write_csv(path: Path, header: list[str], rows) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
