"""The training loop each Ray Train worker runs: Lightning on this worker's shard."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import ray.train
import torch
from lightning.pytorch.callbacks import EarlyStopping

from runyard.config import Experiment
from runyard.data.loaders import SplitsDataModule
from runyard.data.training import training_split
from runyard.execution.trainer import MODEL_FILE
from runyard.models import build_model
from runyard.models.systems import system_for
from runyard.tracking.epoch_logger import MlflowEpochLogger

CKPT_FILE = "state.ckpt"


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


class ReportEpochs(pl.Callback):
    """After every epoch, hand its metrics and a checkpoint to Ray (a Tune trial, or a
    Train run inside one): the scheduler reads them and may stop the trial there, and
    a resumed search continues the trial from its last epoch."""

    def __init__(self, report, checkpoint_cls):
        self.report, self.checkpoint_cls = report, checkpoint_cls

    def on_train_epoch_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        metrics["epoch"] = trainer.current_epoch
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save_checkpoint(Path(tmp) / CKPT_FILE)
            ckpt = self.checkpoint_cls.from_directory(tmp) if trainer.global_rank == 0 else None
            self.report(metrics, checkpoint=ckpt)


@contextmanager
def resume_path(checkpoint: ray.train.Checkpoint | None) -> Iterator[str | None]:
    """The Lightning checkpoint file inside a Ray checkpoint, or None to start afresh."""
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as d:
        yield str(Path(d) / CKPT_FILE)


def train_loop(cfg: dict[str, Any]) -> None:
    """Ray Train entry point; ``cfg`` is built by ``execution.trainer.fit``."""
    _quiet_lightning()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Ray sets OMP_NUM_THREADS=1 for its workers; give torch the CPUs this worker holds.
    torch.set_num_threads(max(1, int(cfg["cpus_per_worker"])))
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)

    exp = Experiment.model_validate(cfg["experiment"])
    init_state = ray.get(cfg["init_ref"]) if cfg.get("init_ref") is not None else None
    system = build_system(exp, cfg["dataset_info"], init_state)
    splits = training_split(ray.get(cfg["data_ref"]), exp.recipe, cfg["seed"], cfg["dataset_info"]["num_outputs"])
    data = SplitsDataModule(
        splits, max(1, exp.recipe.batch_size // world), cfg["seed"], rank, world,
        augment=exp.recipe.augment,
    )

    if cfg.get("report_epochs"):  # a trial of a search: the Tune driver logs to MLflow
        callbacks: list[pl.Callback] = [ReportEpochs(ray.train.report, ray.train.Checkpoint)]
    else:
        epoch_logger = MlflowEpochLogger(
            cfg["tracking_uri"], cfg["run_id"], cfg["flush_every_s"], cfg["retry_s"]
        )
        callbacks = [epoch_logger]
        if cfg["checkpoint_every"]:
            callbacks.append(RayCheckpoint(cfg["checkpoint_every"], epoch_logger))
    # Manual optimisation (the GAN): each optimiser's backward leaves the other's parameters unused.
    distribution = _distribution(world, cfg["use_gpu"], find_unused_parameters=not system.automatic_optimization)
    trainer = build_trainer(exp, callbacks, **distribution)
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
            torch.save(system.net.state_dict(), Path(tmp) / MODEL_FILE)
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(final, checkpoint=ckpt, checkpoint_dir_name="final")


def build_system(exp: Experiment, info: dict[str, Any], init_state: dict | None = None) -> pl.LightningModule:
    """The system for ``exp``; ``init_state``: weights to start from (``transfer.source_state``)."""
    net = build_model(exp.model, info["input_shape"], info["num_outputs"])
    if init_state is not None:
        from runyard.models.transfer import load_part

        load_part(net, init_state)
    # Only systems with one optimiser take per-group learning rates (not the GAN's two).
    extra = {"lr_groups": exp.init.lr_groups} if exp.init and exp.init.lr_groups else {}
    return system_for(info["task"])(net, exp.recipe.model_dump(), **extra)


def build_trainer(exp: Experiment, callbacks: list[pl.Callback], **distribution) -> pl.Trainer:
    """The Lightning Trainer for a recipe; ``distribution`` picks devices and strategy."""
    callbacks = list(callbacks)
    if exp.init and exp.init.freeze:
        from runyard.models.transfer import Freeze

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


def _distribution(world: int, use_gpu: bool, find_unused_parameters: bool = False) -> dict[str, Any]:
    accelerator = "gpu" if use_gpu else "cpu"
    if world == 1:
        # One worker needs no process group: skip DDP's wrapper and all-reduce.
        return {"accelerator": accelerator, "devices": 1}
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment

    return {
        "accelerator": accelerator,
        "devices": "auto",
        "strategy": RayDDPStrategy(find_unused_parameters=find_unused_parameters),
        "plugins": [RayLightningEnvironment()],
    }


def _quiet_lightning() -> None:
    """Lightning's banners and tips repeat once per worker; keep real warnings."""
    import logging
    import warnings

    # ray.train logs every report and checkpoint at INFO, once per epoch per worker.
    for name in ("lightning.pytorch", "lightning.fabric", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Validation runs on the whole split on every rank: numbers are equal, no sync needed.
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
