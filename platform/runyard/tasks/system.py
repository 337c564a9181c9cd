"""The LightningModule ("system") of a training: loss, metrics and optimisation around any
network, the loss and metrics being its task's (``runyard.tasks``)."""

from __future__ import annotations

import importlib
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from runyard import tasks
from runyard.config import Recipe
from runyard.models.optim import build_optimizer, build_schedule
from runyard.models.transfer import param_groups


class EpochMeans:
    """Batch-size-weighted epoch means of step metrics, summed the way Lightning sums
    ``self.log(..., on_epoch=True)`` (the same float32 arithmetic: the same numbers), without
    its cost per call: ``self.log`` moves its metric state to the value's device on every
    call, about 0.5 ms, which is more than a small model's whole step."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    def add(self, metrics: dict[str, torch.Tensor], batch_size: int) -> None:
        for key, value in metrics.items():
            value = value.detach()
            if value.dtype not in (torch.float32, torch.float64):
                value = value.to(torch.get_default_dtype())
            if key not in self.sums:
                self.sums[key] = torch.zeros((), dtype=torch.get_default_dtype(), device=value.device)
                self.counts[key] = torch.zeros((), dtype=torch.long, device=value.device)
            self.sums[key] = self.sums[key] + value * batch_size
            self.counts[key] = self.counts[key] + batch_size

    def pop(self, reduce=lambda t: t) -> dict[str, torch.Tensor]:
        """The means so far (``reduce``: the sum over a data-parallel group), and start afresh."""
        means = {key: reduce(self.sums[key]) / reduce(self.counts[key]) for key in self.sums}
        self.sums, self.counts = {}, {}
        return means


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
        self.train_means = EpochMeans()

    def __setattr__(self, name, value):
        # Lightning sets _current_fx_name around every hook it calls, about 45 times a step;
        # nn.Module's __setattr__ checks parameters, buffers and submodules each time, which
        # costs a small model about 3% of its step. The name is a plain string attribute.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss, metrics = self.task.loss_and_metrics(self.net, batch)
        if self.recipe.l1:
            loss = loss + self.recipe.l1 * sum(
                p.abs().sum() for n, p in self.net.named_parameters() if n.endswith("weight")
            )
        # Epoch means only, logged once an epoch (execution.lightning.LogEpochMeans).
        self.train_means.add({f"train/{k}": v for k, v in metrics.items()}, len(batch[1]))
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
