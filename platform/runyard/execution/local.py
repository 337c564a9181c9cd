"""Lightning in the current process: what a one-worker trial or a CV fold runs.

No Ray Train worker group: a trial actor or a Ray task trains right where it
runs, so a small model pays for its training and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch

from runyard.config import Experiment
from runyard.data import DatasetInfo
from runyard.data.loaders import SplitsDataModule
from runyard.data.splits import Splits
from runyard.data.training import training_split
from runyard.execution.lightning import build_system, build_trainer, quiet_lightning


def fit_local(
    exp: Experiment, info: DatasetInfo, splits: Splits, *, seed: int, cpus: float,
    callbacks: Sequence[pl.Callback] = (), ckpt_path: str | None = None, init_state: dict | None = None,
) -> pl.Trainer:
    """Train ``exp`` on ``splits`` with ``cpus`` threads; return the fitted Trainer.
    ``init_state``: weights to start from (a pipeline's ``init:``)."""
    quiet_lightning()
    torch.set_num_threads(max(1, int(cpus)))
    pl.seed_everything(seed, verbose=False)
    system = build_system(exp, info.as_config(), init_state)
    trainer = build_trainer(exp, list(callbacks), accelerator="cpu", devices=1)
    data = SplitsDataModule(training_split(splits, exp.recipe, seed, info.num_outputs), exp.recipe.batch_size,
                            seed, augment=exp.recipe.augment, shuffle=exp.recipe.shuffle)
    trainer.fit(system, datamodule=data, ckpt_path=ckpt_path)
    return trainer
