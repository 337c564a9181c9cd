"""Generated grayscale images of circles, squares and triangles.

Three datasets share this generator:

- ``shapes`` (classification): one shape per image; the label is its kind,
  0 circle, 1 square, 2 triangle; the classes are balanced.
- ``shapes_seg`` (segmentation, ``runyard.data.shapes_seg``): one to ``max_shapes``
  shapes per image that do not touch one another; the target is a mask giving each
  pixel's class, 0 background, 1 + kind for a pixel of a shape.
- ``shapes_det`` (detection, ``runyard.data.shapes_det``): the same images; the
  target is each shape's kind and bounding box.

Each shape gets a random centre, size ("radius": the circle's radius, the square's
and the triangle's circumradius, a fraction of the image size), rotation and
brightness in [0.5, 1] on a black background, so it lies wholly inside the image.
Gaussian pixel noise is added on top. A pixel belongs to a shape when its centre is
inside it (no anti-aliasing), so a noise-free image is non-zero exactly where its
mask is. Every split is drawn from its own random stream of ``seed``: the test split
does not change when the training split grows.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from runyard.config import at_least
from runyard.data import DatasetInfo
from runyard.data.splits import SPLITS, Splits

KINDS = ("circle", "square", "triangle")
PLACEMENT_TRIES = 50
"""Draws of a centre and size for a shape that touches none placed before; after
that many misses the image gets one shape fewer."""


def info(args: Args) -> DatasetInfo:
    return DatasetInfo(task="classification", input_shape=(1, args.size, args.size), num_classes=len(KINDS))


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    size: Annotated[int, Field(ge=8, le=256)] = 32
    """Image height and width in pixels."""
    train_samples: Annotated[int, Field(ge=3)] = 2000
    val_samples: Annotated[int, Field(ge=3)] = 500
    test_samples: Annotated[int, Field(ge=3)] = 1000
    min_radius: Annotated[float, Field(gt=0, le=0.5)] = 0.12
    max_radius: Annotated[float, Field(gt=0, le=0.5, validate_default=True)] = 0.3
    """Shape sizes, as fractions of the image size."""
    noise: Annotated[float, Field(ge=0)] = 0.1
    """Std of the Gaussian noise added to every pixel."""

    _max_radius_at_least_min = at_least("min_radius", "max_radius")

    def samples(self, split: str) -> int:
        return getattr(self, f"{split}_samples")


def build(args: Args, seed: int) -> Splits:
    def split(k: int, name: str):
        rng = np.random.default_rng([seed, k])
        n = args.samples(name)
        labels = rng.permutation(np.arange(n) % len(KINDS))
        x, _ = draw(rng, args, [[kind] for kind in labels])
        return x, labels.astype(np.int64)

    return Splits(*(a for k, name in enumerate(SPLITS) for a in split(k, name)))


def build_segmentation(args, seed: int) -> Splits:
    """The ``shapes_seg`` splits: ``args`` also has ``max_shapes``."""
    return Splits(*(a for images, masks, _ in multi_shape_splits(args, seed) for a in (images, masks)))


def multi_shape_splits(args, seed: int):
    """For train, val and test in turn: ``draw_with_boxes``' images, masks and boxes,
    one to ``args.max_shapes`` shapes per image (``shapes_seg`` and ``shapes_det``)."""
    for k, name in enumerate(SPLITS):
        rng = np.random.default_rng([seed, k])
        counts = rng.integers(1, args.max_shapes + 1, size=args.samples(name))
        yield draw_with_boxes(rng, args, [rng.integers(0, len(KINDS), size=c) for c in counts])


def draw(rng: np.random.Generator, args: Args, kinds_per_image) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 1, size, size) float32 with noise, and masks (n, size, size) uint8."""
    images, masks, _ = draw_with_boxes(rng, args, kinds_per_image)
    return images, masks


def draw_with_boxes(rng: np.random.Generator, args: Args, kinds_per_image):
    """``draw``'s images and masks, and per image the shapes placed: a list of
    (kind, x0, y0, x1, y1), the tight pixel box of each shape (x1, y1 exclusive).
    The same random draws as ``draw``: the boxes cost no randomness."""
    size, n = args.size, len(kinds_per_image)
    boxes: list[list[tuple[int, int, int, int, int]]] = [[] for _ in range(n)]
    centres = np.arange(size) + 0.5
    cols, rows = np.meshgrid(centres, centres)  # pixel centres: x along the width, y along the height
    images = np.zeros((n, 1, size, size), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i, kinds in enumerate(kinds_per_image):
        placed: list[tuple[float, float, float]] = []
        for kind in kinds:
            for _ in range(PLACEMENT_TRIES):
                r = rng.uniform(args.min_radius, args.max_radius) * size
                cx, cy = rng.uniform(r, size - r, size=2)
                if all(math.hypot(cx - px, cy - py) >= r + pr + 1 for px, py, pr in placed):
                    break
            else:
                continue
            placed.append((cx, cy, r))
            inside = _inside(int(kind), cols - cx, rows - cy, r, rng.uniform(0, 2 * math.pi))
            images[i, 0][inside] = rng.uniform(0.5, 1.0)
            masks[i][inside] = int(kind) + 1
            ys, xs = np.nonzero(inside)
            if len(xs):
                boxes[i].append((int(kind), int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    if args.noise:
        images += (args.noise * rng.standard_normal(images.shape)).astype(np.float32)
    return images, masks, boxes


def _inside(kind: int, dx: np.ndarray, dy: np.ndarray, r: float, angle: float) -> np.ndarray:
    """Which pixels (offsets dx, dy from the centre) lie in a shape of circumradius r."""
    if KINDS[kind] == "circle":
        return dx * dx + dy * dy <= r * r
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # the shape's own frame
    if KINDS[kind] == "square":
        half = r / math.sqrt(2)
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    # Equilateral triangle: vertices at 90, 210 and 330 degrees; each edge is at the
    # inradius r/2 along the direction opposite its vertex.
    inside = np.ones(dx.shape, bool)
    for k in range(3):
        normal = math.pi / 2 + 2 * math.pi * k / 3 + math.pi
        inside &= u * math.cos(normal) + v * math.sin(normal) <= r / 2
    return inside
