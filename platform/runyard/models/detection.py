"""Set prediction for object detection (DETR; Carion et al. 2020): boxes, matching, loss.

A detector gives, per image, one row per object query: ``num_classes + 1`` class scores
("no object" last), then a box ``(cx, cy, w, h)`` as fractions of the image size.
A target is ``(max_objects, 5)`` rows ``(class, cx, cy, w, h)``, class -1 for padding
(``runyard.data.shapes_det``). Training matches queries to true objects one-to-one
(the Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``) and scores each
query against its match, or against "no object" if it has none: so the net learns to
give each object exactly one box, with no anchors and no non-maximum suppression.

Box geometry is plain torch (no torchvision): the same functions serve the loss and
the test metric (``runyard.evaluation.metrics.detection``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# DETR's weights: the matching cost and the loss weigh the three terms alike.
CLASS_WEIGHT, L1_WEIGHT, GIOU_WEIGHT = 1.0, 5.0, 2.0
NO_OBJECT_WEIGHT = 0.1
"""Cross-entropy weight of the "no object" class: most queries have no object, and at
full weight they would teach every query to say so."""


def split_output(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class logits ``(..., num_classes + 1)`` and boxes ``(..., 4)`` of detector outputs."""
    return out[..., :-4], out[..., -4:]


def xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``(cx, cy, w, h)`` -> corners ``(x0, y0, x1, y1)``."""
    centre, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def iou_and_giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and generalised IoU (Rezatofighi et al. 2019) of corner boxes ``a`` and ``b``
    (``(..., 4)``, broadcast against each other). GIoU = IoU - (C - U) / C, with U the
    union and C the smallest box enclosing both: it is in (-1, 1] and, unlike IoU, still
    tells disjoint boxes apart by how far they are from each other."""
    lo, hi = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    union = area(a) + area(b) - inter
    iou = inter / union.clamp(min=1e-9)
    enclosing = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).prod(-1)
    return iou, iou - (enclosing - union) / enclosing.clamp(min=1e-9)


def area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(-1)


def pairwise(fn, a: torch.Tensor, b: torch.Tensor):
    """``fn`` of every box of ``a`` (..., N, 4) with every box of ``b`` (..., M, 4): (..., N, M)."""
    return fn(a[..., :, None, :], b[..., None, :, :])


def match(out: torch.Tensor, targets: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image, the one-to-one assignment of queries to true objects of least total
    cost: (query indices, object indices). The cost of a pair is the loss's terms:
    minus the query's probability of the object's class, the L1 distance of the boxes
    and minus their generalised IoU."""
    from scipy.optimize import linear_sum_assignment

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


def decode(out: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's detection: score (the probability of its likeliest object class),
    that class, and its box as corners; arrays (B, Q), (B, Q), (B, Q, 4)."""
    logits, boxes = split_output(torch.as_tensor(out).float())
    scores, labels = logits.softmax(-1)[..., :-1].max(-1)
    return scores.numpy(), labels.numpy(), xyxy(boxes).numpy()
