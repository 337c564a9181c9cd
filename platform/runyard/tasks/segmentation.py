"""Segmentation: per-pixel classification. The net gives (batch, classes, height, width)
scores and the target is a mask of class indices; IoU and Dice over the foreground classes."""

from __future__ import annotations

import torch.nn.functional as F

from runyard.evaluation import metrics, plots
from runyard.tasks.base import Task

SHOWN = 8
"""Test images shown in the mask grid (the first ones of the split)."""


class Segmentation(Task):
    name = "segmentation"
    metrics = ("val/iou", "val/dice", "val/loss", "train/iou", "train/dice", "train/loss")

    def output_shape(self, info):
        """One score map per class (class 0 the background) over the input's pixels."""
        return (info.num_outputs, *info.input_shape[1:])

    def loss_and_metrics(self, net, batch):
        x, y = batch
        logits = net(x)
        y = y.long()
        loss = F.cross_entropy(logits, y)
        iou, dice = metrics.overlap(metrics.pixel_confusion(y, logits.detach().argmax(1), logits.shape[1]))
        return loss, {"loss": loss.detach(), "iou": iou, "dice": dice}

    def evaluate(self, name, info, splits, out, staging, predict):
        pred = out.argmax(1)
        values, cm = metrics.segmentation(splits.y_test, pred, info.num_classes)
        k = SHOWN
        plots.masks(splits.x_test[:k], splits.y_test[:k], pred[:k], info.num_classes,
                    f"{name}: test inputs, true and predicted masks", staging / "masks.png")
        plots.confusion(cm, f"{name}: test pixels (rows true, columns predicted)", staging / "confusion.png")
        return values

    def scores(self, info, y, out):
        values = metrics.segmentation(y, out.argmax(1), info.num_classes)[0]
        return {k.removeprefix("test/"): v for k, v in values.items()}


TASK = Segmentation()
