"""Object detection on generated shapes: the kind and bounding box of every shape.

The images are ``runyard.data.shapes_seg``'s (the same arguments and seed give the
same images). The target of an image is a float32 array (max_shapes, 5), one row per
shape: its kind (0 circle, 1 square, 2 triangle) and its box as centre x, centre y,
width and height, fractions of the image size (the tight box of the shape's pixels).
An image holds one to ``max_shapes`` shapes; the rows after its last shape are
padding, with kind -1 (``objects`` tells them apart).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from runyard.data import DatasetInfo, shapes
from runyard.data.splits import Splits

PAD = -1
"""The kind of a padding row."""


class Args(shapes.Args):
    max_shapes: Annotated[int, Field(ge=1, le=8)] = 3
    """Shapes per image: a uniform draw from 1..max_shapes (fewer if they do not fit)."""
    max_radius: Annotated[float, Field(gt=0, le=0.5, validate_default=True)] = 0.25
    train_samples: Annotated[int, Field(ge=3)] = 4000


def info(args: Args) -> DatasetInfo:
    return DatasetInfo(task="detection", input_shape=(1, args.size, args.size), num_classes=len(shapes.KINDS),
                       max_objects=args.max_shapes)


def build(args: Args, seed: int) -> Splits:
    parts = []
    for images, _, boxes in shapes.multi_shape_splits(args, seed):
        parts += [images, targets(boxes, args.max_shapes, args.size)]
    return Splits(*parts)


def targets(boxes, max_shapes: int, size: int) -> np.ndarray:
    """Pixel boxes per image, (kind, x0, y0, x1, y1) -> the padded (n, max_shapes, 5) targets."""
    y = np.zeros((len(boxes), max_shapes, 5), np.float32)
    y[:, :, 0] = PAD
    for i, image_boxes in enumerate(boxes):
        for j, (kind, x0, y0, x1, y1) in enumerate(image_boxes):
            y[i, j] = (kind, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size)
    return y


def objects(y: np.ndarray) -> np.ndarray:
    """Which rows of targets ``y`` (..., 5) are shapes, not padding."""
    return y[..., 0] != PAD
