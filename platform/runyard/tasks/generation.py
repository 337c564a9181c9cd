"""Generation (GANs): the task a generative model makes of a labelled image dataset.

A GAN is trained with Lightning's manual optimisation, so this task has its own system.

Each batch takes one discriminator step (real images against the generator's, detached)
and one generator step (the non-saturating loss: make the discriminator say "real"),
each with its own optimiser built from the recipe. Every validation scores a fixed
batch of latent codes with the digits judge (``runyard.evaluation.judge``), and
every epoch leaves a sample grid of another fixed batch for the MLflow run
(``epoch_artifacts``, picked up by rank 0's epoch logger).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl  # the task has its own system; only GAN experiments import this module
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from runyard.config import Recipe
from runyard.evaluation import plots
from runyard.evaluation.judge import judge, quality
from runyard.models.optim import build_optimizer, build_schedule
from runyard.tasks.base import Task

GRID_SAMPLES = 64
"""Images in each epoch's sample grid (8 x 8), always from the same latent codes."""
SCORED_SAMPLES = 512
"""Generated images the judge scores at each validation, always from the same latent codes."""


def fixed_latents(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The same codes on every rank, run and resume: epochs stay comparable."""
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


class GANSystem(pl.LightningModule):
    """``net`` has a ``generator``, a ``discriminator`` (one logit per image) and a
    ``latent_shape`` (``runyard.models.components.gan.DCGAN``). The batches' labels are
    not used for training; the judge is fitted on them."""

    def __init__(self, net: nn.Module, recipe: dict[str, Any]):
        super().__init__()
        self.net = net
        self.save_hyperparameters(ignore=["net"])
        self.recipe = Recipe.model_validate(recipe)
        self.automatic_optimization = False
        self.judge = None
        self.train_images: torch.Tensor | None = None
        self.grid_latents = fixed_latents(GRID_SAMPLES, net.latent_shape, seed=0)
        self.scored_latents = fixed_latents(SCORED_SAMPLES, net.latent_shape, seed=1)
        self._intervals: list[str] = []

    def forward(self, z):
        return self.net(z)

    def setup(self, stage: str) -> None:
        # The judge learns the training split's labels, once per process (cached).
        tensors = getattr(self.trainer.datamodule, "tensors", None)
        if tensors is not None and self.judge is None:
            self.train_images = tensors["x_train"]
            self.judge = judge(tensors["x_train"].numpy(), tensors["y_train"].numpy())

    # ------------------------------------------------------------------ training

    def training_step(self, batch, batch_idx):
        x, _ = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(len(x), *self.net.latent_shape, device=x.device)
        fake = self.net.generator(z)
        real_label, fake_label = torch.ones(len(x), device=x.device), torch.zeros(len(x), device=x.device)

        with self.toggled_optimizer(opt_d):
            real_logits = self.net.discriminator(x)
            fake_logits = self.net.discriminator(fake.detach())
            d_loss = (F.binary_cross_entropy_with_logits(real_logits, real_label)
                      + F.binary_cross_entropy_with_logits(fake_logits, fake_label))
            opt_d.zero_grad()
            self.manual_backward(d_loss + self._l1(self.net.discriminator))
            opt_d.step()

        with self.toggled_optimizer(opt_g):
            g_loss = F.binary_cross_entropy_with_logits(self.net.discriminator(fake), real_label)
            opt_g.zero_grad()
            self.manual_backward(g_loss + self._l1(self.net.generator))
            opt_g.step()

        self._step_schedules("step")
        self.log_dict(
            {"train/d_loss": d_loss.detach(), "train/g_loss": g_loss.detach(),
             "train/d_real": torch.sigmoid(real_logits.detach()).mean(),
             "train/d_fake": torch.sigmoid(fake_logits.detach()).mean()},
            on_step=False, on_epoch=True, sync_dist=True, batch_size=len(x),
        )

    def on_train_epoch_end(self):
        self._step_schedules("epoch")

    def _l1(self, module: nn.Module) -> torch.Tensor | float:
        if not self.recipe.l1:
            return 0.0
        return self.recipe.l1 * sum(p.abs().sum() for n, p in module.named_parameters() if n.endswith("weight"))

    def _step_schedules(self, interval: str) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for s, when in zip(schedulers, self._intervals, strict=True):
            if when == interval:
                s.step()

    def configure_optimizers(self):
        r = self.recipe
        optimizers = [build_optimizer(self.net.generator.parameters(), r),
                      build_optimizer(self.net.discriminator.parameters(), r)]
        # Lightning counts each optimiser's step: a batch is two of recipe.steps.
        total = math.ceil(r.steps / 2) if r.steps else self.trainer.estimated_stepping_batches
        schedules = [build_schedule(o, r, total) for o in optimizers]
        if schedules[0] is None:
            return optimizers
        self._intervals = [s["interval"] for s in schedules]
        return optimizers, [s["scheduler"] for s in schedules]

    # ------------------------------------------------------------------ validation

    def validation_step(self, batch, batch_idx):
        x, _ = batch
        self.log("val/d_real", torch.sigmoid(self.net.discriminator(x)).mean(), on_epoch=True, batch_size=len(x))

    def on_validation_epoch_end(self):
        if self.judge is None:
            return
        samples = self.net.generator(self.scored_latents.to(self.device))
        values = quality(samples, self.judge, self.train_images)
        self.log_dict({f"val/{k}": v for k, v in values.items()})

    # ------------------------------------------------------------------ sample grids

    def epoch_artifacts(self, epoch: int, out: Path) -> None:
        """This epoch's sample grid, ``samples/epoch_NNN.png``, for rank 0's epoch logger."""
        training = self.net.training
        self.net.eval()
        with torch.no_grad():
            images = self.net.generator(self.grid_latents.to(self.device)).cpu().numpy()
        self.net.train(training)
        plots.save_grid(images, out / "samples" / f"epoch_{epoch:03d}.png")


class Generation(Task):
    name = "generation"
    metrics = ("val/inception_score", "val/confidence", "val/class_entropy", "val/nn_distance", "val/d_real",
               "train/d_loss", "train/g_loss", "train/d_real", "train/d_fake")
    system = "runyard.tasks.generation:GANSystem"

    def output_shape(self, info):
        """A sample like the data's."""
        return tuple(info.input_shape)

    def evaluate(self, name, info, splits, out, staging, predict):
        """``out`` holds as many generated images as the test split has real ones. Writes the
        judge's numbers for both (``test/<number>`` and ``test/<number>_real``) and
        ``samples.png``: generated and real test images side by side."""
        j = judge(splits.x_train, splits.y_train)
        train = torch.from_numpy(np.asarray(splits.x_train))
        fake = quality(torch.from_numpy(out), j, train)
        real = quality(torch.from_numpy(np.asarray(splits.x_test)), j, train)
        values = {f"test/{k}": v for k, v in fake.items()}
        values.update({f"test/{k}_real": v for k, v in real.items()})
        shown = min(100, len(out), len(splits.x_test))
        plots.samples(
            [("generated", out[:shown]), ("real (test split)", np.asarray(splits.x_test[:shown]))],
            f"{name}: inception score {fake['inception_score']:.2f} (real {real['inception_score']:.2f})",
            staging / "samples.png",
        )
        return values


TASK = Generation()
