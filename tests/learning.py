"""The learn-tests' harness: a tiny experiment trained in this process (plain Lightning,
no Ray) the way every training path builds it (``runyard.execution.lightning``), and
its validation metrics untrained and trained.

A learn-test asserts a threshold an untrained model fails and a trained one passes;
the thresholds were measured with exactly this sequence (seed, system, data, an
optional validation of the untrained system, then fit), so keep it as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightning.pytorch as pl
from torch import nn

from runyard.config import Experiment
from runyard.data import DatasetInfo
from runyard.data.loaders import SplitsDataModule
from runyard.data.splits import Splits
from runyard.execution.lightning import build_system, build_trainer, quiet_lightning


@dataclass
class Learned:
    """A tiny training: the trained system and its Trainer, and the validation metrics
    of the system untrained (``before``: empty if not measured) and trained (``after``)."""

    system: pl.LightningModule
    trainer: pl.Trainer
    before: dict[str, float]
    after: dict[str, float]

    @property
    def net(self) -> nn.Module:
        return self.system.net


def metrics_of(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def fit_tiny(exp: Experiment, info: DatasetInfo, splits: Splits, *, callbacks: Sequence[pl.Callback] = (),
             init_state: dict | None = None, seed: int = 0, untrained: bool = False) -> Learned:
    """Train ``exp`` (its recipe's epochs) on ``splits`` on the CPU, seeded.

    ``info``: the task and shapes the experiment sees (its ``task:``, ``subset:`` applied);
    ``init_state``: weights to start from (a pipeline's ``init:``); ``untrained``: also
    validate the system before training (``Learned.before``)."""
    quiet_lightning()
    pl.seed_everything(seed, verbose=False)
    system = build_system(exp, info.as_config(), init_state)
    data = SplitsDataModule(splits, exp.recipe.batch_size, seed=seed, augment=exp.recipe.augment,
                            shuffle=exp.recipe.shuffle)
    before: dict[str, float] = {}
    if untrained:
        check = build_trainer(exp, [], accelerator="cpu", devices=1)
        check.validate(system, datamodule=data, verbose=False)
        before = metrics_of(check)
    trainer = build_trainer(exp, list(callbacks), accelerator="cpu", devices=1)
    trainer.fit(system, datamodule=data)
    return Learned(system, trainer, before, metrics_of(trainer))


def untrained_vs_trained(exp: Experiment, info: DatasetInfo, splits: Splits, metric: str, *,
                         init_state: dict | None = None, seed: int = 0) -> tuple[float, float, Learned]:
    """Validation ``metric`` of the untrained and of the trained model, and the training."""
    learned = fit_tiny(exp, info, splits, init_state=init_state, seed=seed, untrained=True)
    before, after = learned.before[metric], learned.after[metric]
    print(f"{exp.name} on {exp.dataset}: {metric} untrained {before:.4f}, trained {after:.4f}")
    return before, after, learned
