"""The LightningModule ("system") of a training: loss, metrics and optimisation around any
network, the loss and metrics being its task's (``runyard.tasks``)."""

from __future__ import annotations

import importlib
from typing import Any

import lightning.pytorch as pl
from torch import nn

from runyard import tasks
from runyard.config import Recipe
from runyard.models.optim import build_optimizer, build_schedule
from runyard.models.transfer import param_groups


class TaskSystem(pl.LightningModule):
    """Trains ``net`` on the task named ``task`` with the optimiser and schedule of ``recipe``."""

    def __init__(self, net: nn.Module, recipe: dict[str, Any], task: str,
                 lr_groups: dict[str, float] | None = None):
        super().__init__()
        self.net = net
        self.save_hyperparameters(ignore=["net"])
        self.task = tasks.get(task)
        self.recipe = Recipe.model_validate(recipe)
        self.lr_groups = dict(lr_groups or {})
        """Module prefix -> multiplier of the recipe's lr (a pipeline's ``init.lr_groups``)."""

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss, metrics = self.task.loss_and_metrics(self.net, batch)
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
        _, metrics = self.task.loss_and_metrics(self.net, batch)
        self.log_dict(
            {f"val/{k}": v for k, v in metrics.items()},
            on_step=False, on_epoch=True, batch_size=len(batch[1]),
        )

    def configure_optimizers(self):
        params = self.parameters()
        if self.lr_groups:
            params = param_groups(self.net, self.recipe.lr, self.lr_groups)
        opt = build_optimizer(params, self.recipe)
        sched = build_schedule(opt, self.recipe, self.trainer.estimated_stepping_batches)
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}


def build_system(task: str, net: nn.Module, recipe: dict[str, Any], **extra) -> pl.LightningModule:
    """The system training ``net`` on ``task``: the task's own (``Task.system``), or ``TaskSystem``.
    ``extra``: ``lr_groups`` (systems with one optimiser only)."""
    own = tasks.get(task).system
    if own is None:
        return TaskSystem(net, recipe, task, **extra)
    module, attr = own.split(":")
    return getattr(importlib.import_module(module), attr)(net, recipe, **extra)
