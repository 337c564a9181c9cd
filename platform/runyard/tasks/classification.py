"""Classification: cross-entropy on class scores; accuracy, per-class F1 and a confusion matrix."""

from __future__ import annotations

import torch.nn.functional as F

from runyard.evaluation import metrics, plots
from runyard.evaluation.tables import write_csv
from runyard.tasks.base import Task


class Classification(Task):
    name = "classification"
    metrics = ("val/acc", "val/loss", "train/acc", "train/loss")

    def loss_and_metrics(self, net, batch):
        x, y = batch
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc}

    def evaluate(self, name, info, splits, out, staging, predict):
        pred = out.argmax(1)
        values, cm = metrics.classification(splits.y_test, pred, info.num_classes)
        plots.confusion(cm, f"{name}: test confusion", staging / "confusion.png")
        write_csv(staging / "confusion.csv", ["actual", "predicted"],
                  zip(splits.y_test.tolist(), pred.tolist(), strict=True))
        return values

    def scores(self, info, y, out):
        values = metrics.classification(y, out.argmax(1), info.num_classes)[0]
        return {k.removeprefix("test/"): v for k, v in values.items()}


TASK = Classification()
