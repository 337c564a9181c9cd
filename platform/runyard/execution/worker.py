"""The training loop each Ray Train worker runs: Lightning on this worker's shard."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import ray.train
import torch

from runyard.config import Experiment
from runyard.data.loaders import SplitsDataModule
from runyard.data.training import training_split
from runyard.execution.checkpoints import CKPT_FILE, MODEL_FILE, resume_path
from runyard.execution.lightning import (
    ReportEpochs,
    build_system,
    build_trainer,
    distribution,
    network_of,
    quiet_lightning,
)
from runyard.tracking.epoch_logger import MlflowEpochLogger


class RayCheckpoint(pl.Callback):
    """Every ``every`` epochs, hand a Lightning checkpoint to Ray Train's storage.

    Metrics are flushed first, so a restart from this checkpoint finds them in
    MLflow and does not log those epochs again.
    """

    def __init__(self, every: int, epoch_logger: MlflowEpochLogger):
        self.every, self.epoch_logger = every, epoch_logger

    def on_train_epoch_end(self, trainer, pl_module):
        if (trainer.current_epoch + 1) % self.every:
            return
        self.epoch_logger.flush()
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save_checkpoint(Path(tmp) / CKPT_FILE)
            ckpt = ray.train.Checkpoint.from_directory(tmp) if trainer.global_rank == 0 else None
            ray.train.report({"epoch": trainer.current_epoch}, checkpoint=ckpt)


def train_loop(cfg: dict[str, Any]) -> None:
    """Ray Train entry point; ``cfg`` is built by ``execution.trainer.fit``."""
    quiet_lightning()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Ray sets OMP_NUM_THREADS=1 for its workers; give torch the CPUs this worker holds.
    torch.set_num_threads(max(1, int(cfg["cpus_per_worker"])))
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)

    exp = Experiment.model_validate(cfg["experiment"])
    init_state = ray.get(cfg["init_ref"]) if cfg.get("init_ref") is not None else None
    system = build_system(exp, cfg["dataset_info"], init_state)
    if cfg.get("stream"):  # files: stream: true: this worker's Ray Data shard (runyard.data.streaming)
        from runyard.data.streaming import data_module

        data = data_module(
            ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val"), cfg["stream"],
            cfg["dataset_info"]["input_shape"], max(1, exp.recipe.batch_size // world), cfg["seed"], rank, world,
            augment=exp.recipe.augment, shuffle=exp.recipe.shuffle,
        )
    else:
        splits = training_split(ray.get(cfg["data_ref"]), exp.recipe, cfg["seed"], cfg["dataset_info"]["num_outputs"])
        data = SplitsDataModule(
            splits, max(1, exp.recipe.batch_size // world), cfg["seed"], rank, world,
            augment=exp.recipe.augment, shuffle=exp.recipe.shuffle,
        )

    if cfg.get("report_epochs"):  # a trial of a search: the Tune driver logs to MLflow
        callbacks: list[pl.Callback] = [ReportEpochs(ray.train.report, ray.train.Checkpoint, cfg.get("checkpoint_at"))]
    else:
        epoch_logger = MlflowEpochLogger(
            cfg["tracking_uri"], cfg["run_id"], cfg["flush_every_s"], cfg["retry_s"]
        )
        callbacks = [epoch_logger]
        if cfg["checkpoint_every"]:
            callbacks.append(RayCheckpoint(cfg["checkpoint_every"], epoch_logger))
    # Manual optimisation (the GAN): each optimiser's backward leaves the other's parameters unused.
    dist = distribution(world, cfg["use_gpu"], find_unused_parameters=not system.automatic_optimization)
    trainer = build_trainer(exp, callbacks, **dist)
    if world > 1:
        from ray.train.lightning import prepare_trainer

        trainer = prepare_trainer(trainer)
    with resume_path(ray.train.get_checkpoint()) as ckpt_path:
        if ckpt_path and rank == 0:
            epoch = torch.load(ckpt_path, map_location="cpu", weights_only=False)["epoch"]
            print(f"runyard: resuming from the checkpoint after epoch {epoch}", flush=True)
        fit_start = time.time()
        trainer.fit(system, datamodule=data, ckpt_path=ckpt_path)
        fit_end = time.time()
    if cfg.get("report_epochs"):
        return  # the last epoch's checkpoint is the trial's model

    # The final weights go to Ray's storage once, from rank 0; the driver reads them.
    final = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # Wall-clock bounds of Lightning's fit, so callers can tell start-up from training.
    final.update(epochs=trainer.current_epoch, fit_start=fit_start, fit_end=fit_end)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            torch.save(network_of(system).state_dict(), Path(tmp) / MODEL_FILE)
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(final, checkpoint=ckpt, checkpoint_dir_name="final")
