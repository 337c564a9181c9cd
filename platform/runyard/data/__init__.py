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

from runyard.config import validate
from runyard.errors import RunyardError

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
    """A name in ``runyard.tasks.TASKS``, which says what the task logs and what a model
    must output. No dataset is a generation dataset: a generative model makes its
    experiment one (``runyard.models.MODEL_TASKS``)."""
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


def builder(name: str):
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
    return validate(builder(name).Args, raw, where)
