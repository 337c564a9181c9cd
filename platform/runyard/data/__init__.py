"""Datasets: name -> builder module (imported lazily), and the on-disk split format.

A builder module defines ``Args`` (a pydantic model of its params.yaml section),
``INFO`` (task, input shape, classes) and ``build(args, seed) -> Splits``. A builder
whose shapes depend on its arguments (an image size) defines ``info(args)`` instead
of ``INFO``.

Three kinds of dataset share that contract and one namespace (``builder_for``):

- built-in generators, by name (``DATASETS``), under params.yaml's ``datasets:``;
- the user's own files (``runyard.data.files``), under ``files:``: each entry's
  ``source:`` is a DVC dependency of its prepare stage;
- the user's own builder module, under ``datasets:`` with ``builder: package.module``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
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


FILES = "runyard.data.files"
BUILDER_KEY = "builder"
"""``datasets.<name>.builder``: the import path of the user's own builder module."""
SOURCE_KEY = "source"


def builder(name: str):
    """A built-in dataset's builder module."""
    if name not in DATASETS:
        raise RunyardError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return importlib.import_module(DATASETS[name])


def builder_for(name: str, raw: dict[str, Any] | None, where: str = "", *, files: bool = False) -> ModuleType:
    """The builder module of dataset ``name`` declared as ``raw`` (its params.yaml section):
    ``runyard.data.files`` for an entry of ``files:``, the module ``raw["builder"]`` names,
    or the built-in one. ``where`` names the section in errors."""
    raw = raw or {}
    at = f"{where}: " if where else ""
    if files:
        return importlib.import_module(FILES)
    if SOURCE_KEY in raw and BUILDER_KEY not in raw:
        raise RunyardError(f"{at}source: a dataset from files goes under files: (not datasets:), so that "
                           f"DVC re-runs its prepare stage when the file changes")
    if BUILDER_KEY in raw:
        return _user_builder(raw[BUILDER_KEY], f"{at}{BUILDER_KEY}")
    if name not in DATASETS:
        raise RunyardError(f"{at}unknown dataset {name!r}; allowed: {', '.join(DATASETS)}, a files: entry, "
                           f"or builder: package.module (your own builder)")
    return importlib.import_module(DATASETS[name])


def _user_builder(path: Any, where: str) -> ModuleType:
    if not isinstance(path, str) or not path.strip() or ":" in path or "/" in path:
        raise RunyardError(f"{where}: {path!r} is not a module's import path; allowed: package.module "
                           f"(a module defining Args, INFO or info(args), and build(args, seed))")
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as e:
        raise RunyardError(f"{where}: {path!r}: no module {e.name!r} (is it in the project folder, "
                           f"or installed?)") from None
    missing = [n for n in ("Args", "build") if not hasattr(module, n)]
    if not (hasattr(module, "INFO") or hasattr(module, "info")):
        missing.append("INFO or info(args)")
    if missing:
        raise RunyardError(f"{where}: module {path} has no {', '.join(missing)}; a builder defines Args "
                           f"(a pydantic model), INFO or info(args), and build(args, seed)")
    return module


def _args_of(raw: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (raw or {}).items() if k != BUILDER_KEY}


def dataset_params(name: str, raw: dict[str, Any] | None, where: str, *, files: bool = False):
    """The typed builder arguments of ``raw`` (the ``builder:`` key is not one of them)."""
    return validate(builder_for(name, raw, where, files=files).Args, _args_of(raw), where)


def dataset_info(name: str, args=None, *, raw: dict[str, Any] | None = None, files: bool = False,
                 root: Path | None = None, where: str = "") -> DatasetInfo:
    """The dataset's task and shapes, for builder arguments ``args`` (None: the defaults).

    ``raw``/``files`` say which builder (default: the built-in ``name``); a file dataset's
    info reads its files under ``root``."""
    module = builder_for(name, raw, where, files=files)
    if args is None:
        args = dataset_params(name, raw, where, files=files)
    if module.__name__ == FILES:
        return module.info(args, root=root, where=where)
    info = module.info(args) if hasattr(module, "info") else module.INFO
    if not isinstance(info, DatasetInfo):
        raise RunyardError(f"{where}: {BUILDER_KEY}: {module.__name__}'s INFO / info(args) gave a "
                           f"{type(info).__name__}, not a runyard.data.DatasetInfo")
    return info


def build_dataset(name: str, args, seed: int, *, raw: dict[str, Any] | None = None, files: bool = False,
                  root: Path | None = None, where: str = ""):
    """Build the splits of dataset ``name`` (nothing is written)."""
    module = builder_for(name, raw, where, files=files)
    if module.__name__ == FILES:
        return module.build(args, seed, root=root, where=where)
    return module.build(args, seed)


def dataset_source(name: str, args, *, raw: dict[str, Any] | None = None, files: bool = False) -> str:
    """Where the dataset comes from, as its MLflow dataset input says: the raw files'
    path, ``runyard:<name>`` for a generator, ``python:<module>`` for a user's builder."""
    if files:
        return args.source
    if BUILDER_KEY in (raw or {}):
        return f"python:{raw[BUILDER_KEY]}"
    return f"runyard:{name}"
