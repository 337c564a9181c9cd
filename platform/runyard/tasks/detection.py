"""Detection: set prediction (DETR; Carion et al. 2020), boxes, Hungarian matching, mAP.

A detector gives, per image, one row per object query: ``num_classes + 1`` class scores
("no object" last), then a box ``(cx, cy, w, h)`` as fractions of the image size.
A target is ``(max_objects, 5)`` rows ``(class, cx, cy, w, h)``, class -1 for padding
(``runyard.data.shapes_det``). Training matches queries to true objects one-to-one
(the Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``) and scores each
query against its match, or against "no object" if it has none: so the net learns to
give each object exactly one box, with no anchors and no non-maximum suppression.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from runyard.evaluation import metrics, plots
from runyard.evaluation.boxes import decode, iou_and_giou, pairwise, split_output, xyxy
from runyard.evaluation.tables import write_csv
from runyard.tasks.base import Task

# DETR's weights: the matching cost and the loss weigh the three terms alike.
CLASS_WEIGHT, L1_WEIGHT, GIOU_WEIGHT = 1.0, 5.0, 2.0
NO_OBJECT_WEIGHT = 0.1
"""Cross-entropy weight of the "no object" class: most queries have no object, and at
full weight they would teach every query to say so."""
SHOWN = 8
"""Test images shown in the detection figure (the first ones of the split)."""
SCORE_SHOWN = 0.5
"""Detections drawn in the figure: those scored at least this (mAP counts them all)."""


def match(out: torch.Tensor, targets: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image, the one-to-one assignment of queries to true objects of least total
    cost: (query indices, object indices). The cost of a pair is the loss's terms:
    minus the query's probability of the object's class, the L1 distance of the boxes
    and minus their generalised IoU."""
    with torch.no_grad():
        logits, boxes = split_output(out.float())
        prob = logits.softmax(-1)  # (B, Q, C + 1)
        classes = targets[..., 0].long().clamp(min=0)  # (B, K); padding masked below
        cost_class = -torch.gather(prob, 2, classes[:, None, :].expand(-1, prob.shape[1], -1))
        true_boxes = targets[..., 1:].float()
        cost_l1 = torch.cdist(boxes, true_boxes, p=1)
        _, giou = pairwise(iou_and_giou, xyxy(boxes), xyxy(true_boxes))
        cost = (CLASS_WEIGHT * cost_class + L1_WEIGHT * cost_l1 - GIOU_WEIGHT * giou).cpu().numpy()
    real = (targets[..., 0] >= 0).cpu().numpy()
    pairs = []
    for c, keep in zip(cost, real, strict=True):
        objects = np.flatnonzero(keep)
        queries, picked = linear_sum_assignment(c[:, objects])
        pairs.append((queries, objects[picked]))
    return pairs


def set_loss(out: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DETR's loss for one decoder layer's outputs ``(B, Q, C + 5)`` and padded targets
    ``(B, K, 5)``: cross-entropy of every query's class (its match's, or "no object"),
    plus L1 and 1 - GIoU of the matched boxes, averaged over the true objects."""
    logits, boxes = split_output(out)
    no_object = logits.shape[-1] - 1
    pairs = match(out, targets)
    image, query, obj = (
        torch.as_tensor(np.concatenate(parts), dtype=torch.long, device=out.device)
        for parts in zip(*((np.full(len(q), i), q, o) for i, (q, o) in enumerate(pairs)), strict=True)
    )

    wanted = torch.full(logits.shape[:2], no_object, dtype=torch.long, device=out.device)
    wanted[image, query] = targets[image, obj, 0].long()
    weight = torch.ones(no_object + 1, device=out.device)
    weight[no_object] = NO_OBJECT_WEIGHT
    ce = F.cross_entropy(logits.transpose(1, 2), wanted, weight)

    n = max(len(obj), 1)
    predicted, true = boxes[image, query], targets[image, obj, 1:].to(boxes.dtype)
    l1 = (predicted - true).abs().sum() / n
    _, giou = iou_and_giou(xyxy(predicted), xyxy(true))
    giou_loss = (1 - giou).sum() / n
    loss = CLASS_WEIGHT * ce + L1_WEIGHT * l1 + GIOU_WEIGHT * giou_loss
    return loss, {"ce": ce.detach(), "l1": l1.detach(), "giou": giou_loss.detach()}


class Detection(Task):
    """A net with ``forward_layers`` (every decoder layer's detections) is scored on each
    layer and the losses summed, DETR's auxiliary losses; ``loss`` is that sum, ``ce``,
    ``l1`` and ``giou`` are the last layer's terms, and ``map50`` is its mAP at IoU 0.5
    (on the batch: the validation batch is the whole split)."""

    name = "detection"
    metrics = ("val/map50", "val/loss", "train/map50", "train/loss")

    def output_shape(self, info):
        """A row per query (any number, at least ``max_objects``): class scores, "no object", the box."""
        return (None, info.num_outputs + 1 + 4)

    def loss_and_metrics(self, net, batch):
        x, y = batch
        layers = net.forward_layers(x) if hasattr(net, "forward_layers") else net(x)[None]
        losses = [set_loss(out, y) for out in layers]
        loss = torch.stack([layer_loss for layer_loss, _ in losses]).sum()
        final = layers[-1].detach().float().cpu().numpy()
        map50 = metrics.mean_average_precision(y.cpu().numpy(), final, final.shape[-1] - 5, iou_threshold=0.5)
        return loss, {"loss": loss.detach(), "map50": torch.tensor(map50), **losses[-1][1]}

    def evaluate(self, name, info, splits, out, staging, predict):
        """mAP at IoU 0.5 and 0.75; the first test images with true and detected boxes; every
        detection scored at least ``SCORE_SHOWN`` as a CSV (image, class, score, box)."""
        values = metrics.detection(splits.y_test, out, info.num_classes)
        scores, labels, boxes = decode(out)
        shown = scores >= SCORE_SHOWN
        detected = [np.column_stack([labels[i][keep], boxes[i][keep], scores[i][keep]])
                    for i, keep in enumerate(shown)]
        real = splits.y_test[..., 0] >= 0
        corners = xyxy(torch.from_numpy(splits.y_test[..., 1:])).numpy()
        true = [np.column_stack([splits.y_test[i, keep, 0], corners[i][keep]]) for i, keep in enumerate(real)]
        k = SHOWN
        plots.detections(splits.x_test[:k], true[:k], detected[:k], info.num_classes,
                         f"{name}: true (dashed) and detected boxes, mAP@0.5 {values['test/map50']:.3f}",
                         staging / "boxes.png")
        write_csv(staging / "detections.csv", ["image", "class", "score", "x0", "y0", "x1", "y1"],
                  ([i, int(d[0]), round(float(d[5]), 4), *(round(float(v), 4) for v in d[1:5])]
                   for i, rows in enumerate(detected) for d in rows))
        return values


TASK = Detection()
