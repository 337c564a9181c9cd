"""Optimizer and learning-rate schedule from a recipe."""

from __future__ import annotations

import torch

from runyard.config import Recipe


def build_optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    lr, wd = recipe.lr, recipe.weight_decay
    match recipe.optimizer:
        case "sgd":
            return torch.optim.SGD(params, lr=lr, weight_decay=wd)
        case "momentum":
            return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=wd)
        case "nesterov":
            return torch.optim.SGD(
                params, lr=lr, momentum=recipe.momentum, nesterov=True, weight_decay=wd
            )
        case "adam":
            return torch.optim.Adam(params, lr=lr, betas=(recipe.momentum, 0.999), weight_decay=wd)
        case "adamw":
            return torch.optim.AdamW(params, lr=lr, betas=(recipe.momentum, 0.999), weight_decay=wd)
        case "rmsprop":
            return torch.optim.RMSprop(params, lr=lr, momentum=recipe.momentum, weight_decay=wd)
        case "adagrad":
            return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    raise AssertionError(recipe.optimizer)  # config validation makes this unreachable


def build_schedule(optimizer, recipe: Recipe, total_steps: int) -> dict | None:
    """A Lightning ``lr_scheduler`` dict, or None for a constant rate."""
    s = recipe.schedule
    match s.name:
        case "constant":
            return None
        case "step":
            sched = torch.optim.lr_scheduler.StepLR(optimizer, s.step_size, gamma=s.gamma)
            return {"scheduler": sched, "interval": "epoch"}
        case "exponential":
            sched = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=s.gamma)
            return {"scheduler": sched, "interval": "epoch"}
        case "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=max(1, total_steps), eta_min=s.min_lr
            )
            return {"scheduler": sched, "interval": "step"}
    raise AssertionError(s.name)
