"""Segmentation of generated shapes: which shape each pixel belongs to.

The generator is ``runyard.data.shapes``'s. Each image holds one to ``max_shapes``
shapes that do not touch; its mask (uint8, height x width) is 0 for background and
1 + kind (1 circle, 2 square, 3 triangle) for a pixel of a shape.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from runyard.data import DatasetInfo, shapes
from runyard.data.splits import Splits


class Args(shapes.Args):
    max_shapes: Annotated[int, Field(ge=1, le=8)] = 3
    """Shapes per image: a uniform draw from 1..max_shapes (fewer if they do not fit)."""
    max_radius: Annotated[float, Field(gt=0, le=0.5, validate_default=True)] = 0.25
    test_samples: Annotated[int, Field(ge=3)] = 500


def info(args: Args) -> DatasetInfo:
    return DatasetInfo(
        task="segmentation", input_shape=(1, args.size, args.size), num_classes=1 + len(shapes.KINDS)
    )


def build(args: Args, seed: int) -> Splits:
    return shapes.build_segmentation(args, seed)
