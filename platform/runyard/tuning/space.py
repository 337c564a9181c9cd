"""A pipeline's search space: checked before any trial starts, then turned into Ray Tune domains.

Keys are dotted paths into the experiment (``model.dropout``, ``recipe.lr``,
``recipe.schedule.name``). Each domain's bounds (or every option) are applied to
the experiment and validated like a hand-written pipeline, so a value the model
or recipe would reject fails here, with the key, not in trial 7.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from runyard.config import Experiment, Recipe, Search, _fields_at, format_validation_error
from runyard.errors import RunyardError

ROOTS = ("model", "recipe")


def check_space(exp: Experiment, info, where: str) -> None:
    """Every key names something the experiment takes; every bound and option is valid."""
    from runyard.config import kwargs_model
    from runyard.models import INJECTED, check_model_fits, component

    if exp.recipe.epochs is None and exp.cv is None:
        raise RunyardError(f"{where}: recipe.steps: a search budgets trials in epochs; set recipe.epochs instead")
    for key, domain in exp.search.space.items():
        at = f"{where}: search.space.{key}"
        root, _, rest = key.partition(".")
        if root not in ROOTS or not rest:
            raise RunyardError(f"{at}: not a searchable key; allowed: model.<argument>, recipe.<field>")
        parts = rest.split(".")
        if root == "model":
            allowed = list(kwargs_model(component(exp.model_name), skip=INJECTED).model_fields)
            if len(parts) > 1 or parts[0] not in allowed:
                raise RunyardError(f"{at}: {exp.model_name} takes no {rest!r}; allowed: {', '.join(allowed)}")
        else:
            allowed = _fields_at(Recipe, tuple(parts[:-1]))
            if parts[-1] not in allowed:
                raise RunyardError(f"{at}: the recipe has no {rest!r}; allowed: {', '.join(allowed)}")
        for value in domain.corners():
            try:
                trial = apply(exp, {key: value})
                if root == "model":
                    check_model_fits(trial.model, info, exp.dataset, where="model")
            except RunyardError as e:
                detail = str(e).split(": ", 1)[-1]
                raise RunyardError(f"{at}: {value!r} is not allowed: {detail}") from None


def apply(exp: Experiment, overrides: dict[str, Any]) -> Experiment:
    """The experiment with ``overrides`` (dotted keys) set, validated like a pipeline file."""
    from runyard.models import check_model_spec

    raw = exp.model_dump(mode="json", by_alias=True)
    for key, value in overrides.items():
        node = raw
        *path, leaf = key.split(".")
        for part in path:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # e.g. recipe.early_stopping when the file leaves it out
            node = node[part]
        node[leaf] = value
    try:
        trial = Experiment.model_validate(raw)
    except ValidationError as e:
        raise RunyardError(format_validation_error(e, Experiment, "trial")) from None
    check_model_spec(trial.model, where="model")
    return trial


def tune_domains(search: Search) -> dict[str, Any]:
    """Ray Tune's param_space. Options that are lists travel as JSON strings (Optuna
    only samples scalars); ``decode`` turns them back."""
    from ray import tune

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

