"""Tasks: what a dataset asks of a model, one module each.

A task module holds everything about its task: the metrics a training logs, the
per-sample output a model must give, the loss and metrics of a training step, the
test evaluation (metrics, plots, tables) and the score of a search's sweep. It
defines ``TASK``, an instance of ``runyard.tasks.base.Task``.

A new task is one module and one line in ``TASKS``. Imported lazily: loading a
config reads only the task it uses.
"""

from __future__ import annotations

import importlib

from runyard.errors import RunyardError
from runyard.tasks.base import Task

TASKS: dict[str, str] = {
    "classification": "runyard.tasks.classification",
    # Trains and scores like classification; its evaluator also draws the graph.
    "node_classification": "runyard.tasks.node_classification",
    "regression": "runyard.tasks.regression",
    "segmentation": "runyard.tasks.segmentation",
    "reconstruction": "runyard.tasks.reconstruction",
    "detection": "runyard.tasks.detection",
    "generation": "runyard.tasks.generation",
}

CLASSICAL_METRICS = ("val/acc", "train/acc")
"""A classical (scikit-learn) fit has no loss curve: accuracy on the training and validation splits, once."""


def get(name: str) -> Task:
    if name not in TASKS:
        raise RunyardError(f"unknown task {name!r}; allowed: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name]).TASK


def metrics_for(task: str, classical: bool = False) -> tuple[str, ...]:
    """The metrics a training logs (and so the allowed ``optimized_metric`` values)."""
    return CLASSICAL_METRICS if classical else get(task).metrics
