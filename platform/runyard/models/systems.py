"""LightningModules ("systems"): loss, metrics and optimisation around any component."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from runyard.config import Recipe
from runyard.models.gan import GANSystem
from runyard.models.optim import build_optimizer, build_schedule


class System(pl.LightningModule):
    """Shared training logic; subclasses define the loss and the metrics."""

    def __init__(self, net: nn.Module, recipe: dict[str, Any], lr_groups: dict[str, float] | None = None):
        super().__init__()
        self.net = net
        self.save_hyperparameters(ignore=["net"])
        self.recipe = Recipe.model_validate(recipe)
        self.lr_groups = dict(lr_groups or {})
        """Module prefix -> multiplier of the recipe's lr (a pipeline's ``init.lr_groups``)."""

    def forward(self, x):
        return self.net(x)

    def loss_and_metrics(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        loss, metrics = self.loss_and_metrics(batch)
        if self.recipe.l1:
            loss = loss + self.recipe.l1 * sum(
                p.abs().sum() for n, p in self.net.named_parameters() if n.endswith("weight")
            )
        # Epoch means only: per-step logging costs more than a small model's step.
        self.log_dict(
            {f"train/{k}": v for k, v in metrics.items()},
            on_step=False, on_epoch=True, sync_dist=True, batch_size=len(batch[1]),
        )
        return loss

    def validation_step(self, batch, batch_idx):
        _, metrics = self.loss_and_metrics(batch)
        self.log_dict(
            {f"val/{k}": v for k, v in metrics.items()},
            on_step=False, on_epoch=True, batch_size=len(batch[1]),
        )

    def configure_optimizers(self):
        params = self.parameters()
        if self.lr_groups:
            from runyard.models.transfer import param_groups

            params = param_groups(self.net, self.recipe.lr, self.lr_groups)
        opt = build_optimizer(params, self.recipe)
        sched = build_schedule(opt, self.recipe, self.trainer.estimated_stepping_batches)
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}


class ClassifierSystem(System):
    def loss_and_metrics(self, batch):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc}


class RegressorSystem(System):
    def loss_and_metrics(self, batch):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        return loss, {"loss": loss.detach(), "mse": loss.detach()}


class SegmenterSystem(System):
    """Per-pixel classification: the net gives (batch, classes, height, width) scores and
    the target is a mask of class indices; IoU and Dice over the foreground classes."""

    def loss_and_metrics(self, batch):
        from runyard.evaluation.metrics import overlap, pixel_confusion

        x, y = batch
        logits = self(x)
        y = y.long()
        loss = F.cross_entropy(logits, y)
        iou, dice = overlap(pixel_confusion(y, logits.detach().argmax(1), logits.shape[1]))
        return loss, {"loss": loss.detach(), "iou": iou, "dice": dice}


class DetectorSystem(System):
    """Set prediction (DETR): each image's queries matched one-to-one to its objects
    (Hungarian), then DETR's loss (``runyard.models.detection.set_loss``). A net with
    ``forward_layers`` (every decoder layer's detections) is scored on each layer and
    the losses summed, DETR's auxiliary losses; ``loss`` is that sum, ``ce``, ``l1`` and
    ``giou`` are the last layer's terms, and ``map50`` is its mAP at IoU 0.5 (on the
    batch: the validation batch is the whole split)."""

    def loss_and_metrics(self, batch):
        from runyard.evaluation.metrics import mean_average_precision
        from runyard.models.detection import set_loss

        x, y = batch
        layers = self.net.forward_layers(x) if hasattr(self.net, "forward_layers") else self(x)[None]
        losses = [set_loss(out, y) for out in layers]
        loss = torch.stack([layer_loss for layer_loss, _ in losses]).sum()
        final = layers[-1].detach().float().cpu().numpy()
        map50 = mean_average_precision(y.cpu().numpy(), final, final.shape[-1] - 5, iou_threshold=0.5)
        return loss, {"loss": loss.detach(), "map50": torch.tensor(map50), **losses[-1][1]}


SYSTEMS: dict[str, type[pl.LightningModule]] = {
    "classification": ClassifierSystem,
    "node_classification": ClassifierSystem,
    "regression": RegressorSystem,
    "segmentation": SegmenterSystem,
    # An autoencoder regresses its input; a denoising one gets noisy inputs from
    # recipe.augment (training batches only) and the clean image as its target.
    "reconstruction": RegressorSystem,
    "detection": DetectorSystem,
    "generation": GANSystem,
}


def system_for(task: str) -> type[pl.LightningModule]:
    return SYSTEMS[task]
