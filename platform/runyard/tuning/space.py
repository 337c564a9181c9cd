"""A pipeline's search space as Ray Tune domains, and a trial's values applied to the experiment.

Keys are dotted paths into the experiment (``model.dropout``, ``recipe.lr``,
``recipe.schedule.name``). ``runyard.checks.check_space`` has checked every bound and
option like a hand-written pipeline when the config was loaded, so a value the model
or recipe would reject failed there, with the key, not in trial 7.
"""

from __future__ import annotations

import json
from typing import Any

from ray import tune

from runyard.config import Experiment, Search
from runyard.models import check_model_spec


def apply(exp: Experiment, overrides: dict[str, Any]) -> Experiment:
    """The experiment with ``overrides`` (dotted keys) set, validated like a pipeline file."""
    trial = exp.with_overrides(overrides)
    check_model_spec(trial.model, where="model")
    return trial


def tune_domains(search: Search) -> dict[str, Any]:
    """Ray Tune's param_space. Options that are lists travel as JSON strings (Optuna
    only samples scalars); ``decode`` turns them back."""
    grid = search.algorithm == "grid"
    space = {}
    for key, d in search.space.items():
        if d.kind in ("choice", "grid"):
            options = [encode(v) for v in d.values]
            space[key] = tune.grid_search(options) if grid or d.kind == "grid" else tune.choice(options)
        elif d.kind == "uniform":
            space[key] = tune.uniform(*d.values)
        elif d.kind == "loguniform":
            space[key] = tune.loguniform(*d.values)
        else:
            space[key] = tune.randint(d.values[0], d.values[1] + 1)  # randint excludes the upper bound
    return space


def encode(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def decode(config: dict[str, Any], search: Search) -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        listed = key in search.space and search.space[key].kind in ("choice", "grid")
        out[key] = json.loads(value) if listed and isinstance(value, str) and value[:1] in "[{" else value
    return out

