"""Checks that span layers, run when a project's config is loaded: a dataset and an
experiment exist and agree, a model fits its dataset and task, a search space fits its
model, an ``init:`` fits both models. Each failure is one ``RunyardError`` line naming
the file and the key; nothing has been written yet.

``project`` arguments are a ``runyard.project.Project`` (which calls these checks).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from runyard import tasks
from runyard.config import Experiment, Recipe, fields_at, kwargs_model
from runyard.data import DATASETS, DatasetInfo, dataset_info, dataset_params
from runyard.data.view import view_info
from runyard.errors import RunyardError
from runyard.models import (
    INJECTED,
    MODEL_TASKS,
    build_model,
    check_model_spec,
    component,
    is_classical,
    is_lightning_model,
    model_inputs,
    transfer,
)

SEARCH_ROOTS = ("model", "recipe")

_checking: list[str] = []
"""Experiments whose init: is being checked, outermost first (to catch cycles)."""


# --------------------------------------------------------------------------- params.yaml


def check_params(project, params) -> None:
    """Every dataset and experiment params.yaml names exists."""
    where = project.rel(project.params_file)
    for name, args in params.datasets.items():
        dataset_params(name, args, where=f"{where}: datasets.{name}")
    for name, args in params.catalogue.datasets.items():
        if name in params.datasets:
            raise RunyardError(f"{where}: catalogue.datasets.{name}: also under datasets:; a dataset is "
                               f"one or the other (both would write data/{name})")
        dataset_params(name, args, where=f"{where}: catalogue.datasets.{name}")
    for name, args in params.files.items():
        for other, section in ((params.datasets, "datasets"), (params.catalogue.datasets, "catalogue.datasets")):
            if name in other:
                raise RunyardError(f"{where}: files.{name}: also under {section}:; a dataset is one or the "
                                   f"other (both would write data/{name})")
        dataset_params(name, args, where=f"{where}: files.{name}", files=True)
    known = [*DATASETS, *params.datasets, *params.catalogue.datasets, *params.files]
    for section, mapping in params.dataset_maps().items():
        for exp, ds in mapping.items():
            if not project.pipeline_file(exp).is_file():
                raise RunyardError(
                    f"{where}: {section}.{exp}: no file {project.rel(project.pipeline_file(exp))}; "
                    f"allowed: {', '.join(project.experiment_names())}"
                )
            if ds not in known:
                raise RunyardError(
                    f"{where}: {section}.{exp}: unknown dataset {ds!r}; allowed: {', '.join(known)}"
                )


# --------------------------------------------------------------------------- pipelines/*.yaml


def refuse_classical_recipe(raw: Any, where: str) -> None:
    """A scikit-learn model has no optimizer, epochs or batches: a recipe for one is a mistake.

    Checked on the raw YAML, so even an empty or half-written recipe gets this message."""
    if not (isinstance(raw, dict) and "recipe" in raw and isinstance(raw.get("model"), dict)):
        return
    name = raw["model"].get("name")
    if is_classical(name):
        raise RunyardError(
            f"{where}: recipe: not used by {name}, a scikit-learn model fitted in one go; remove the section"
        )


def check_experiment(project, exp: Experiment, where: str) -> None:
    """Everything about ``exp`` that needs more than its own schema."""
    if exp.dataset not in project.dataset_names():
        raise RunyardError(
            f"{where}: dataset: unknown dataset {exp.dataset!r}; allowed: {', '.join(project.dataset_names())}"
        )
    _check_params_agree(project, exp, where)
    info = experiment_info(project, exp, where)
    check_model_spec(exp.model, where=f"{where}: model")
    classical = is_classical(exp.model_name)
    if not classical and exp.recipe is None:
        raise RunyardError(f"{where}: recipe: required key is missing (model {exp.model_name} is trained with one)")
    check_model_fits(exp.model, info, exp.dataset, where=f"{where}: model")
    _check_recipe(exp, info, where)
    _check_lessons(exp, info.task, classical, where)
    allowed = tasks.metrics_for(info.task, classical)
    if exp.optimized_metric not in allowed:
        logged_by = f"classical model {exp.model_name}" if classical else f"a {info.task} dataset"
        raise RunyardError(
            f"{where}: optimized_metric: {exp.optimized_metric!r} is not logged for "
            f"{logged_by}; allowed: {', '.join(allowed)}"
        )
    if exp.search:
        check_space(exp, info, where)
    if exp.init:
        check_init(project, exp, info, where)


def _check_params_agree(project, exp: Experiment, where: str) -> None:
    """params.yaml's maps name the same dataset, search and source model as the pipeline."""
    params, params_where = project.params, project.rel(project.params_file)
    for section, mapping in params.dataset_maps().items():
        mapped = mapping.get(exp.name)
        if mapped is not None and mapped != exp.dataset:
            raise RunyardError(
                f"{params_where}: {section}.{exp.name}: says dataset {mapped!r} "
                f"but {where} says {exp.dataset!r}; make them agree"
            )
    for section in ("searches", "catalogue.searches"):
        if exp.name in params.dataset_maps()[section] and exp.search is None:
            raise RunyardError(f"{params_where}: {section}.{exp.name}: {where} has no search: section")
    finetune = params.catalogue.finetunes.get(exp.name)
    source = exp.init.source if exp.init else None
    if finetune is not None and finetune.source != source:
        raise RunyardError(
            f"{params_where}: catalogue.finetunes.{exp.name}.from: says {finetune.source!r} "
            f"but {where} init.from says {source!r}; make them agree"
        )


def _check_recipe(exp: Experiment, info: DatasetInfo, where: str) -> None:
    recipe = exp.recipe
    if recipe is not None and recipe.augment is not None and len(info.input_shape) != 3:
        raise RunyardError(
            f"{where}: recipe.augment: needs images (channels, height, width); "
            f"{exp.dataset} inputs have shape {tuple(info.input_shape)}"
        )
    if recipe is not None and recipe.augment is not None and info.task == "detection":
        raise RunyardError(
            f"{where}: recipe.augment: not supported for detection ({exp.dataset}): the transforms "
            f"would move the shapes but not their boxes; remove the section"
        )
    if info.task == "generation" and recipe is not None and recipe.gradient_clip is not None:
        raise RunyardError(f"{where}: recipe.gradient_clip: not supported by {exp.model_name} (two optimisers, "
                           "stepped by hand); remove the key")


def _check_lessons(exp: Experiment, task: str, classical: bool, where: str) -> None:
    """Random labels and adversarial attacks are about classifiers (attacks: with gradients)."""
    classifies = task in ("classification", "node_classification")
    if exp.recipe is not None and exp.recipe.label_noise and not classifies:
        raise RunyardError(f"{where}: recipe.label_noise: needs a classification dataset; "
                           f"{exp.dataset} is a {task} dataset")
    attacked = exp.evaluate is not None and exp.evaluate.adversarial is not None
    if attacked and (classical or not classifies):
        what = f"{exp.model_name} has no gradients" if classical else f"{exp.dataset} is a {task} dataset"
        raise RunyardError(f"{where}: evaluate.adversarial: needs a deep classifier; {what}")


# --------------------------------------------------------------------------- what the experiment sees


def experiment_info(project, exp: Experiment, where: str) -> DatasetInfo:
    """The dataset's info as the experiment sees it (its ``task:``, ``subset:`` and model)."""
    info = project.dataset_info(exp.dataset)
    if exp.subset is not None:
        if info.task != "classification":
            raise RunyardError(f"{where}: subset: needs a classification dataset; {exp.dataset} is {info.task}")
        bad = [c for c in exp.subset.classes if c >= info.num_classes]
        if bad:
            raise RunyardError(
                f"{where}: subset.classes: {bad} not in {exp.dataset}; allowed: 0..{info.num_classes - 1}"
            )
    return with_model_task(exp.model_name, view_info(info, exp), exp.dataset, where=f"{where}: model")


def with_model_task(model: str, info: DatasetInfo, dataset: str, where: str) -> DatasetInfo:
    """The dataset's info with the task of its model, if the model has one of its own
    (``MODEL_TASKS``: a GAN draws a labelled image dataset's images)."""
    task = MODEL_TASKS.get(model)
    if task is None:
        return info
    if info.task != "classification" or len(info.input_shape) != 3:
        fitting = [d for d in DATASETS
                   if dataset_info(d).task == "classification" and len(dataset_info(d).input_shape) == 3]
        raise RunyardError(
            f"{where}: {model} draws the images of a labelled image dataset and {dataset} is not one; "
            f"allowed datasets: {', '.join(fitting)}"
        )
    return dataclasses.replace(info, task=task)


def check_model_fits(spec: dict[str, Any], info: DatasetInfo, dataset: str, where: str) -> None:
    """Build the model and run two dummy samples through it: a model that cannot take
    the dataset's inputs fails here, in a blink, not on a Ray worker after a run exists."""
    if is_classical(spec["name"]):
        # Any input shape fits (it is flattened); scikit-learn checks its arguments only at
        # fit time, and check_model_spec has checked them already.
        if info.task != "classification":
            fitting = [d for d in DATASETS if dataset_info(d).task == "classification"]
            raise RunyardError(
                f"{where}: {spec['name']} is a classifier and {dataset} is a {info.task} dataset; "
                f"allowed datasets: {', '.join(fitting)}"
            )
        return
    try:
        net = build_model(spec, info.input_shape, info.num_outputs)
        with torch.no_grad():
            out = net.eval()(torch.from_numpy(model_inputs(net, torch.zeros(2, *info.input_shape).numpy())))
    except RunyardError:
        raise
    except Exception as e:  # noqa: BLE001 (any failure means the model does not fit)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunyardError(
            f"{where}: {spec['name']} does not fit {dataset} inputs of shape {tuple(info.input_shape)}: {first}"
        ) from None
    task = tasks.get(info.task)
    if not isinstance(out, torch.Tensor) or len(out) != 2 or not task.fits_output(info, tuple(out.shape)[1:]):
        need = task.output_shape(info)
        if None in need:  # detection: any number of queries, enough for the objects
            need = f"({', '.join(f'>= {info.max_objects} queries' if n is None else str(n) for n in need)})"
        got = tuple(out.shape)[1:] if isinstance(out, torch.Tensor) else type(out).__name__
        raise RunyardError(f"{where}: {spec['name']} gives outputs {got} per sample, {dataset} needs {need}")


def check_space(exp: Experiment, info, where: str) -> None:
    """Every key names something the experiment takes; every bound and option is valid."""
    if exp.recipe.epochs is None and exp.cv is None:
        raise RunyardError(f"{where}: recipe.steps: a search budgets trials in epochs; set recipe.epochs instead")
    for key, domain in exp.search.space.items():
        at = f"{where}: search.space.{key}"
        root, _, rest = key.partition(".")
        if root not in SEARCH_ROOTS or not rest:
            raise RunyardError(f"{at}: not a searchable key; allowed: model.<argument>, recipe.<field>")
        parts = rest.split(".")
        if root == "model":
            allowed = list(kwargs_model(component(exp.model_name), skip=INJECTED).model_fields)
            if len(parts) > 1 or parts[0] not in allowed:
                raise RunyardError(f"{at}: {exp.model_name} takes no {rest!r}; allowed: {', '.join(allowed)}")
        else:
            allowed = fields_at(Recipe, tuple(parts[:-1]))
            if parts[-1] not in allowed:
                raise RunyardError(f"{at}: the recipe has no {rest!r}; allowed: {', '.join(allowed)}")
        for value in domain.corners():
            try:
                trial = exp.with_overrides({key: value})
                if root == "model":
                    check_model_spec(trial.model, where="model")
                    check_model_fits(trial.model, info, exp.dataset, where="model")
            except RunyardError as e:
                detail = str(e).split(": ", 1)[-1]
                raise RunyardError(f"{at}: {value!r} is not allowed: {detail}") from None


def check_init(project, exp: Experiment, info: DatasetInfo, where: str) -> None:
    """Every key of ``exp.init`` against the source experiment and both models."""
    init = exp.init
    for section in ("search", "cv"):
        if getattr(exp, section) is not None:
            raise RunyardError(
                f"{where}: init: not supported together with {section}: (it trains with runyard train only)"
            )
    if is_classical(exp.model_name):
        raise RunyardError(f"{where}: init: {exp.model_name} is a scikit-learn model; only deep models take weights")
    others = [n for n in project.experiment_names() if n != exp.name]
    if init.source not in others:
        raise RunyardError(f"{where}: init.from: unknown experiment {init.source!r}; allowed: {', '.join(others)}")
    if init.source in _checking:
        raise RunyardError(f"{where}: init.from: {init.source!r} starts from {exp.name!r} in turn (a cycle)")
    _checking.append(exp.name)
    try:
        src = project.experiment(init.source)
    finally:
        _checking.pop()
    src_where = project.rel(project.pipeline_file(src.name))
    if is_classical(src.model_name):
        raise RunyardError(f"{where}: init.from: {src.name} is a scikit-learn model; it has no weights to copy")

    net = build_model(exp.model, info.input_shape, info.num_outputs)
    src_info = view_info(project.dataset_info(src.dataset), src)
    src_net = build_model(src.model, src_info.input_shape, src_info.num_outputs)
    names = transfer.module_names(net)
    if init.part != "all":
        for model, label in ((net, "this model"), (src_net, f"{src.name} ({src_where})")):
            if init.part not in transfer.module_names(model):
                raise RunyardError(
                    f"{where}: init.part: {label} has no module {init.part!r}; "
                    f"allowed: all, {transfer.allowed_modules(model)}"
                )
    mismatch = transfer.mismatch_of(transfer.part_of(src_net.state_dict(), init.part),
                                    transfer.part_of(net.state_dict(), init.part))
    if mismatch:
        raise RunyardError(
            f"{where}: init.part: {init.part!r} of {src.name} ({src_where}) does not fit this model: {mismatch}"
        )
    if init.lr_groups and is_lightning_model(exp.model_name):
        raise RunyardError(
            f"{where}: init.lr_groups: {exp.model_name} is a LightningModule: its own configure_optimizers "
            "sets its learning rates"
        )
    for key in ("freeze", "lr_groups"):
        for prefix in getattr(init, key):
            if prefix not in names:
                raise RunyardError(
                    f"{where}: init.{key}: no module {prefix!r} in model {exp.model_name}; "
                    f"allowed: {transfer.allowed_modules(net)}"
                )
            if key == "freeze" and not transfer.within(prefix, init.part):
                raise RunyardError(
                    f"{where}: init.freeze: {prefix!r} is not copied from {src.name} (init.part is "
                    f"{init.part!r}); freeze only modules within it"
                )


