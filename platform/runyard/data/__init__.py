"""Datasets: name -> builder module (imported lazily), and the on-disk split format.

A builder module defines ``Args`` (a pydantic model of its params.yaml section),
``INFO`` (task, input shape, classes) and ``build(args, seed) -> Splits``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

DATASETS: dict[str, str] = {
    "mnist1d": "runyard.data.mnist1d",
    "digits": "runyard.data.digits",
    "regression1d": "runyard.data.regression1d",
    "karate": "runyard.data.karate",
    "graphs": "runyard.data.graphs",
}


@dataclass(frozen=True)
class DatasetInfo:
    task: Literal["classification", "node_classification", "regression"]
    """node_classification trains and scores like classification; its evaluator also
    draws the graph (samples are nodes of one graph, see runyard.data.karate)."""
    input_shape: tuple[int, ...]
    num_classes: int | None = None
    """None for regression; the model's output size is then 1."""

    @property
    def num_outputs(self) -> int:
        return self.num_classes or 1


def builder(name: str):
    from runyard.errors import RunyardError

    if name not in DATASETS:
        raise RunyardError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return importlib.import_module(DATASETS[name])


def dataset_info(name: str) -> DatasetInfo:
    return builder(name).INFO


def dataset_params(name: str, raw: dict[str, Any], where: str):
    from runyard.config import validate

    return validate(builder(name).Args, raw, where)
