"""Datasets: name -> builder module (imported lazily), and the on-disk split format.

A builder module defines ``Args`` (a pydantic model of its params.yaml section),
``INFO`` (task, input shape, classes) and ``build(args, seed) -> Splits``. A builder
whose shapes depend on its arguments (an image size) defines ``info(args)`` instead
of ``INFO``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

DATASETS: dict[str, str] = {
    "mnist1d": "runyard.data.mnist1d",
    "digits": "runyard.data.digits",
    "regression1d": "runyard.data.regression1d",
    "shapes": "runyard.data.shapes",
    "shapes_seg": "runyard.data.shapes_seg",
    "shapes_det": "runyard.data.shapes_det",
    "karate": "runyard.data.karate",
    "graphs": "runyard.data.graphs",
}


@dataclass(frozen=True)
class DatasetInfo:
    task: Literal["classification", "node_classification", "regression", "segmentation", "reconstruction",
                  "detection", "generation"]
    """node_classification trains and scores like classification; its evaluator also
    draws the graph (samples are nodes of one graph, see runyard.data.karate).
    No dataset is a generation dataset: a generative model makes its experiment one
    (``runyard.models.MODEL_TASKS``)."""
    input_shape: tuple[int, ...]
    num_classes: int | None = None
    """None for regression; the model's output size is then 1. For segmentation, the
    pixel classes, class 0 being the background. For detection, the object classes."""
    max_objects: int | None = None
    """Detection: the most objects an image holds (a detector needs as many queries)."""

    @property
    def num_outputs(self) -> int:
        return self.num_classes or 1

    def as_config(self) -> dict[str, Any]:
        """What a Ray worker needs to build the model and system (plain JSON)."""
        return {"task": self.task, "input_shape": list(self.input_shape), "num_outputs": self.num_outputs}

    @property
    def output_shape(self) -> tuple[int | None, ...]:
        """What a model must return per sample: ``(num_outputs,)``, or for segmentation
        one score map per class over the input's pixels, ``(num_classes, height, width)``;
        for reconstruction the input's shape; for detection a row per query (None: any
        number of them, at least ``max_objects``): class scores, "no object" last, then the
        box, ``(None, classes + 5)``; for generation, a
        sample like the data's."""
        if self.task == "generation":
            return tuple(self.input_shape)
        if self.task == "segmentation":
            return (self.num_outputs, *self.input_shape[1:])
        if self.task == "reconstruction":  # the input itself (runyard.data.view)
            return tuple(self.input_shape)
        if self.task == "detection":
            return (None, self.num_outputs + 1 + 4)
        return (self.num_outputs,)

    def fits_output(self, per_sample: tuple[int, ...]) -> bool:
        """Whether a model's outputs for one sample have ``output_shape`` (None matching
        ``max_objects`` or more)."""
        want = self.output_shape
        return len(per_sample) == len(want) and all(
            n == w or (w is None and n >= (self.max_objects or 1)) for n, w in zip(per_sample, want, strict=True)
        )


def builder(name: str):
    from runyard.errors import RunyardError

    if name not in DATASETS:
        raise RunyardError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return importlib.import_module(DATASETS[name])


def dataset_info(name: str, args=None) -> DatasetInfo:
    """The dataset's task and shapes, for builder arguments ``args`` (None: the defaults)."""
    module = builder(name)
    if hasattr(module, "info"):
        return module.info(module.Args() if args is None else args)
    return module.INFO


def dataset_params(name: str, raw: dict[str, Any], where: str):
    from runyard.config import validate

    return validate(builder(name).Args, raw, where)
