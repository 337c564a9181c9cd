"""Lightning, built one way for every place that trains: the Ray Train worker
(``execution.worker``), a search trial or a CV fold in process (``execution.local``)
and the benchmark. The system, the Trainer and its quiet settings live here only.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn

from runyard.config import Experiment
from runyard.execution.checkpoints import CKPT_FILE, NETWORK_PREFIX
from runyard.models import build_model
from runyard.models.transfer import layers, load_part
from runyard.tasks.system import build_system as task_system


def quiet_lightning() -> None:
    """Lightning's banners and tips repeat once per worker; keep real warnings."""
    # ray.train logs every report and checkpoint at INFO, once per epoch per worker.
    for name in ("lightning.pytorch", "lightning.fabric", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Validation runs on the whole split on every rank: numbers are equal, no sync needed.
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def build_system(exp: Experiment, info: dict[str, Any], init_state: dict | None = None) -> pl.LightningModule:
    """The system for ``exp``; ``init_state``: weights to start from (``transfer.source_state``).
    A user's LightningModule is its own system: returned as built."""
    net = build_model(exp.model, info["input_shape"], info["num_outputs"])
    if init_state is not None:
        load_part(net, init_state)
    if isinstance(net, pl.LightningModule):
        return net
    # Only systems with one optimiser take per-group learning rates (not the GAN's two).
    extra = {"lr_groups": exp.init.lr_groups} if exp.init and exp.init.lr_groups else {}
    return task_system(info["task"], net, exp.recipe.model_dump(), **extra)


def network_of(system: pl.LightningModule) -> nn.Module:
    """The network a system trains, whose weights are the model: runyard's systems (``TaskSystem``,
    a task's own such as the GAN's) hold it as ``net``; a user's LightningModule is its own."""
    return system.net if type(system).__module__.startswith("runyard.tasks.") else system


class NetworkPrefix(pl.Callback):
    """Records in every checkpoint where the network's weights are in its ``state_dict``
    (``checkpoints.net_weights`` reads them back without building the system)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[NETWORK_PREFIX] = "net." if network_of(pl_module) is not pl_module else ""


class LogEpochMeans(pl.Callback):
    """Logs a system's training means of the epoch (``TaskSystem.train_means``), summed over
    the data-parallel group as Lightning's ``sync_dist`` would, at the epoch's end."""

    def on_train_epoch_end(self, trainer, pl_module):
        means = getattr(pl_module, "train_means", None)
        if means is None:  # a system that logs for itself (the GAN's, a user's LightningModule)
            return
        if trainer.world_size > 1:
            values = means.pop(lambda t: trainer.strategy.reduce(t, reduce_op="sum"))
        else:
            values = means.pop()
        if values:
            pl_module.log_dict(values, on_step=False, on_epoch=True, batch_size=1)


def build_trainer(exp: Experiment, callbacks: list[pl.Callback], **distribution) -> pl.Trainer:
    """The Lightning Trainer for a recipe; ``distribution`` picks devices and strategy."""
    # First: the epoch's training means are logged before any other callback reads them.
    callbacks = [LogEpochMeans(), *callbacks, NetworkPrefix()]
    if exp.init and exp.init.freeze:
        callbacks.append(Freeze(exp.init.freeze, exp.init.unfreeze_every))
    if exp.recipe.early_stopping:
        es = exp.recipe.early_stopping
        callbacks.append(
            EarlyStopping(
                exp.optimized_metric, min_delta=es.min_delta, patience=es.patience,
                mode=exp.optimized_mode,
            )
        )
    return pl.Trainer(
        **distribution,
        max_epochs=exp.recipe.epochs or -1,
        max_steps=exp.recipe.steps or -1,
        gradient_clip_val=exp.recipe.gradient_clip,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def distribution(world: int, use_gpu: bool, find_unused_parameters: bool = False) -> dict[str, Any]:
    accelerator = "gpu" if use_gpu else "cpu"
    if world == 1:
        # One worker needs no process group: skip DDP's wrapper and all-reduce.
        return {"accelerator": accelerator, "devices": 1}
    # Ray's DDP strategy only where there is more than one worker (a Ray Train worker group).
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment

    return {
        "accelerator": accelerator,
        "devices": "auto",
        "strategy": RayDDPStrategy(find_unused_parameters=find_unused_parameters),
        "plugins": [RayLightningEnvironment()],
    }


class ReportEpochs(pl.Callback):
    """After every epoch, hand its metrics to Ray (a Tune trial, or a Train run inside
    one): the scheduler reads them and may stop the trial there. A checkpoint goes with
    the reports in ``checkpoint_at`` (epochs from 1; None: all; see
    ``tuning.results.checkpointed_reports``) and with the last epoch's; a resumed search
    continues the trial from its latest checkpoint."""

    def __init__(self, report, checkpoint_cls, checkpoint_at: list[int] | None = None):
        self.report, self.checkpoint_cls = report, checkpoint_cls
        self.checkpoint_at = None if checkpoint_at is None else set(checkpoint_at)

    def on_train_epoch_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        metrics["epoch"] = trainer.current_epoch
        if not self._checkpointed(trainer):
            self.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save_checkpoint(Path(tmp) / CKPT_FILE)
            ckpt = self.checkpoint_cls.from_directory(tmp) if trainer.global_rank == 0 else None
            self.report(metrics, checkpoint=ckpt)


    def _checkpointed(self, trainer) -> bool:
        report = trainer.current_epoch + 1
        # Early stopping decided at validation, before this hook; epochs or steps used up.
        last = (trainer.should_stop or 0 < (trainer.max_epochs or 0) <= report
                or 0 < (trainer.max_steps or 0) <= trainer.global_step)
        return self.checkpoint_at is None or last or report in self.checkpoint_at


class Freeze(pl.Callback):
    """Keep the ``prefixes`` modules of the system's network fixed; with ``unfreeze_every``
    unfreeze one layer from the top every that many epochs (ULMFiT's gradual unfreezing).
    Logs ``train/frozen_layers`` per epoch. Why gradients are dropped rather than
    ``requires_grad`` switched: ``models.transfer``'s docstring."""

    def __init__(self, prefixes: list[str], unfreeze_every: int | None = None):
        self.prefixes, self.unfreeze_every = list(prefixes), unfreeze_every
        self.layers: list[list[nn.Module]] = []

    def setup(self, trainer, pl_module, stage):
        self.layers = layers(network_of(pl_module), self.prefixes)

    def n_frozen(self, epoch: int) -> int:
        """How many layers, from the bottom, are frozen in ``epoch``."""
        n = len(self.layers)
        return max(0, n - epoch // self.unfreeze_every) if self.unfreeze_every else n

    def on_train_epoch_start(self, trainer, pl_module):
        pl_module.log("train/frozen_layers", float(self.n_frozen(trainer.current_epoch)),
                      on_step=False, on_epoch=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # Lightning puts the whole model in train mode after each validation; a frozen
        # layer stays in eval mode (batch norm on its running statistics), an unfrozen one trains.
        n = self.n_frozen(trainer.current_epoch)
        for i, layer in enumerate(self.layers):
            for m in layer:
                m.train(i >= n)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        for layer in self.layers[: self.n_frozen(trainer.current_epoch)]:
            for m in layer:
                for p in m.parameters():
                    p.grad = None
