"""Adversarial examples: test accuracy of a trained classifier under FGSM.

The fast gradient sign method (Goodfellow et al. 2015) moves every input value by
epsilon along the sign of the loss gradient: the largest first-order increase of the
loss within an L-infinity ball of radius epsilon. Epsilon is in the dataset's input
units (for the 8x8 digits, pixel intensities in [0, 1]), and the attacked input is
clipped back into ``clip`` when the pipeline gives a valid range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from runyard.config import Adversarial
from runyard.evaluation import plots
from runyard.evaluation.tables import write_csv


def metric_name(eps: float) -> str:
    """``test/fgsm_acc/eps_0.05``: MLflow allows no ``@`` or ``=`` in a metric name."""
    return f"test/fgsm_acc/eps_{eps:g}"


def fgsm(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
         clip: tuple[float, float] | None = None) -> torch.Tensor:
    """FGSM inputs for ``x`` (the net's gradient in eval mode: batch norm and dropout as served)."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(net(x), y), x)
    attacked = x.detach() + eps * grad.sign()
    return attacked if clip is None else attacked.clamp(*clip)


def accuracy_under_attack(net: nn.Module, x: np.ndarray, y: np.ndarray, cfg: Adversarial) -> dict[float, float]:
    """Test accuracy at each epsilon (epsilon 0: the clean accuracy)."""
    net.eval()
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    out = {}
    for eps in cfg.epsilons:
        attacked = fgsm(net, xs, ys, eps, cfg.clip)
        with torch.no_grad():
            out[eps] = (net(attacked).argmax(1) == ys).float().mean().item()
    return out


def evaluate(name: str, net: nn.Module, x: np.ndarray, y: np.ndarray, num_classes: int, cfg: Adversarial,
             staging: Path) -> dict:
    """``test/fgsm_acc/eps_*`` metrics, plus ``fgsm.csv`` and ``fgsm.png`` (accuracy against epsilon)."""
    acc = accuracy_under_attack(net, x, y, cfg)
    write_csv(staging / "fgsm.csv", ["epsilon", "accuracy"], sorted(acc.items()))
    clip = "" if cfg.clip is None else f", clipped to [{cfg.clip[0]:g}, {cfg.clip[1]:g}]"
    plots.sweep(
        {"test accuracy": sorted(acc.items())}, "epsilon (L-inf, input units)", "accuracy",
        f"{name}: FGSM{clip}", staging / "fgsm.png", chance=1 / num_classes,
    )
    return {metric_name(eps): value for eps, value in acc.items()}
