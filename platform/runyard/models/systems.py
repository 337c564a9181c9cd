"""LightningModules ("systems"): loss, metrics and optimisation around any component."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from runyard.config import Recipe
from runyard.models.gan import GANSystem
from runyard.models.optim import build_optimizer, build_schedule


class System(pl.LightningModule):
    """Shared training logic; subclasses define the loss and the metrics."""

    def __init__(self, net: nn.Module, recipe: dict[str, Any]):
        super().__init__()
        self.net = net
        self.save_hyperparameters(ignore=["net"])
        self.recipe = Recipe.model_validate(recipe)

    def forward(self, x):
        return self.net(x)

    def loss_and_metrics(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        loss, metrics = self.loss_and_metrics(batch)
        if self.recipe.l1:
            loss = loss + self.recipe.l1 * sum(
                p.abs().sum() for n, p in self.net.named_parameters() if n.endswith("weight")
            )
        # Epoch means only: per-step logging costs more than a small model's step.
        self.log_dict(
            {f"train/{k}": v for k, v in metrics.items()},
            on_step=False, on_epoch=True, sync_dist=True, batch_size=len(batch[1]),
        )
        return loss

    def validation_step(self, batch, batch_idx):
        _, metrics = self.loss_and_metrics(batch)
        self.log_dict(
            {f"val/{k}": v for k, v in metrics.items()},
            on_step=False, on_epoch=True, batch_size=len(batch[1]),
        )

    def configure_optimizers(self):
        opt = build_optimizer(self.parameters(), self.recipe)
        sched = build_schedule(opt, self.recipe, self.trainer.estimated_stepping_batches)
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}


class ClassifierSystem(System):
    def loss_and_metrics(self, batch):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc}


class RegressorSystem(System):
    def loss_and_metrics(self, batch):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        return loss, {"loss": loss.detach(), "mse": loss.detach()}


class SegmenterSystem(System):
    """Per-pixel classification: the net gives (batch, classes, height, width) scores and
    the target is a mask of class indices; IoU and Dice over the foreground classes."""

    def loss_and_metrics(self, batch):
        from runyard.evaluation.metrics import overlap, pixel_confusion

        x, y = batch
        logits = self(x)
        y = y.long()
        loss = F.cross_entropy(logits, y)
        iou, dice = overlap(pixel_confusion(y, logits.detach().argmax(1), logits.shape[1]))
        return loss, {"loss": loss.detach(), "iou": iou, "dice": dice}


SYSTEMS: dict[str, type[pl.LightningModule]] = {
    "classification": ClassifierSystem,
    "node_classification": ClassifierSystem,
    "regression": RegressorSystem,
    "segmentation": SegmenterSystem,
    "generation": GANSystem,
}


def system_for(task: str) -> type[pl.LightningModule]:
    return SYSTEMS[task]
