"""Regression: mean squared error; the evaluation draws the fit and writes it as a table."""

from __future__ import annotations

import torch.nn.functional as F

from runyard.evaluation import metrics, plots
from runyard.evaluation.tables import write_csv
from runyard.tasks.base import Task


class Regression(Task):
    name = "regression"
    metrics = ("val/mse", "val/loss", "train/mse", "train/loss")

    def loss_and_metrics(self, net, batch):
        x, y = batch
        loss = F.mse_loss(net(x), y)
        return loss, {"loss": loss.detach(), "mse": loss.detach()}

    def evaluate(self, name, info, splits, out, staging, predict):
        values = metrics.regression(splits.y_test, out)
        y, pred = splits.y_test.ravel().tolist(), out.ravel().tolist()
        if splits.x_test[0].size == 1:  # one input: the fitted curve over it
            plots.fit(splits.x_test, splits.y_test, out, f"{name}: fit", staging / "fit.png")
            write_csv(staging / "fit.csv", ["x", "target", "prediction"],
                      zip(splits.x_test.ravel().tolist(), y, pred, strict=True))
        else:  # several inputs (a table's columns): each prediction against its target
            plots.predicted_vs_target(splits.y_test, out, f"{name}: predictions", staging / "fit.png")
            write_csv(staging / "fit.csv", ["target", "prediction"], zip(y, pred, strict=True))
        return values

    def scores(self, info, y, out):
        return {k.removeprefix("test/"): v for k, v in metrics.regression(y, out).items()}


TASK = Regression()
