"""The training's epoch means (TaskSystem.train_means, logged by LogEpochMeans) are the
numbers Lightning's own ``self.log(..., on_epoch=True)`` gives, bit for bit, and every
callback that reads them at the epoch's end (the MLflow epoch logger, Tune's reports) sees them."""

from __future__ import annotations

import lightning.pytorch as pl

from runyard.bench import experiment, with_epochs
from runyard.data import dataset_info
from runyard.data.loaders import SplitsDataModule
from runyard.execution.lightning import build_system, build_trainer, quiet_lightning
from runyard.tasks.system import TaskSystem


class LightningMeans(TaskSystem):
    """The system as it logged before: ``self.log_dict`` on every step."""

    def training_step(self, batch, batch_idx):
        loss, metrics = self.task.loss_and_metrics(self.net, batch)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, on_step=False, on_epoch=True,
                      sync_dist=True, batch_size=len(batch[1]))
        return loss


class Seen(pl.Callback):
    def __init__(self):
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def train(system_class) -> list[dict[str, float]]:
    quiet_lightning()
    exp, splits = experiment("reference")
    exp = with_epochs(exp, 2)
    info = dataset_info("mnist1d")
    pl.seed_everything(0, verbose=False)
    system = build_system(exp, {"task": info.task, "input_shape": info.input_shape, "num_outputs": info.num_outputs})
    system.__class__ = system_class
    seen = Seen()
    trainer = build_trainer(exp, [seen], accelerator="cpu", devices=1)
    trainer.fit(system, datamodule=SplitsDataModule(splits, 100, seed=0))
    return seen.epochs


def test_epoch_means_equal_lightnings_own_and_reach_every_callback():
    ours, lightnings = train(TaskSystem), train(LightningMeans)
    assert len(ours) == 2 and {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(ours[-1])
    assert ours == lightnings
    assert ours[0]["train/loss"] != ours[1]["train/loss"], "each epoch has its own means"
