"""Box geometry for detection, in plain torch (no torchvision): the same functions serve
DETR's training loss (``runyard.tasks.detection``) and the test metric (mAP).

A detector gives, per image, one row per object query: ``num_classes + 1`` class scores
("no object" last), then a box ``(cx, cy, w, h)`` as fractions of the image size.
"""

from __future__ import annotations

import numpy as np
import torch


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


def decode(out: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's detection: score (the probability of its likeliest object class),
    that class, and its box as corners; arrays (B, Q), (B, Q), (B, Q, 4)."""
    logits, boxes = split_output(torch.as_tensor(out).float())
    scores, labels = logits.softmax(-1)[..., :-1].max(-1)
    return scores.numpy(), labels.numpy(), xyxy(boxes).numpy()
