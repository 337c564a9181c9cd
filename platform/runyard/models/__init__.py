"""Model registry: a name in a pipeline's ``model:`` section -> a component (lazy import).

Two families share one namespace and one validation:
- deep (``MODELS``): an ``nn.Module`` trained by the classifier / regressor / segmenter systems on Ray Train;
- classical (``CLASSICAL``): a typed factory of a scikit-learn estimator, fitted in one go.

Adding an architecture = one component (or factory) and one line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from runyard.errors import RunyardError

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

MODELS: dict[str, str] = {
    "logistic": "runyard.models.components.mlp:LogisticRegression",
    "mlp": "runyard.models.components.mlp:MLP",
    "shallow": "runyard.models.components.mlp:shallow",
    "cnn1d": "runyard.models.components.conv:CNN1d",
    "cnn2d": "runyard.models.components.conv:CNN2d",
    "rnn": "runyard.models.components.rnn:RNN",
    "transformer": "runyard.models.components.attention:TransformerEncoder",
    "tcn": "runyard.models.components.tcn:TCN",
    "unet": "runyard.models.components.unet:UNet",
    "gcn": "runyard.models.components.gcn:GCN",
    "graph_mlp": "runyard.models.components.gcn:GraphMLP",
    "conv_autoencoder": "runyard.models.components.autoencoder:ConvAutoencoder",
    "detr": "runyard.models.components.detr:DETR",
    "dcgan": "runyard.models.components.gan:DCGAN",
}

# Models that make their experiment's task, whatever the dataset's: a GAN learns to draw a
# labelled image dataset's images, and the labels train the judge that scores its samples.
MODEL_TASKS: dict[str, str] = {
    "dcgan": "generation",
}

CLASSICAL: dict[str, str] = {
    "decision_tree": "runyard.models.classical:decision_tree",
    "random_forest": "runyard.models.classical:random_forest",
    "gradient_boosting": "runyard.models.classical:gradient_boosting",
    "svm": "runyard.models.classical:svm",
    "knn": "runyard.models.classical:knn",
}

ALL_MODELS: dict[str, str] = {**MODELS, **CLASSICAL}

# Arguments the dataset fills in; a pipeline may not set them.
INJECTED = {"input_shape", "num_outputs"}

METRICS = {
    "classification": ("val/acc", "val/loss", "train/acc", "train/loss"),
    "node_classification": ("val/acc", "val/loss", "train/acc", "train/loss"),
    "regression": ("val/mse", "val/loss", "train/mse", "train/loss"),
    "segmentation": ("val/iou", "val/dice", "val/loss", "train/iou", "train/dice", "train/loss"),
    "reconstruction": ("val/mse", "val/loss", "train/mse", "train/loss"),
    "detection": ("val/map50", "val/loss", "train/map50", "train/loss"),
    "generation": ("val/inception_score", "val/confidence", "val/class_entropy", "val/nn_distance", "val/d_real",
                   "train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"),
}
# A classical fit has no loss curve: accuracy on the training and validation splits, once.
CLASSICAL_METRICS = ("val/acc", "train/acc")


def is_classical(name: Any) -> bool:
    return name in CLASSICAL


def metrics_for(task: str, model: str | None = None) -> tuple[str, ...]:
    """The metrics a training logs (and so the allowed ``optimized_metric`` values)."""
    return CLASSICAL_METRICS if is_classical(model) else METRICS[task]


def with_model_task(model: str, info, dataset: str, where: str):
    """The dataset's info as the experiment sees it: with the task of its model, if the
    model has one of its own (``MODEL_TASKS``)."""
    import dataclasses

    task = MODEL_TASKS.get(model)
    if task is None:
        return info
    if info.task != "classification" or len(info.input_shape) != 3:
        from runyard.data import DATASETS, dataset_info

        fitting = [d for d in DATASETS
                   if dataset_info(d).task == "classification" and len(dataset_info(d).input_shape) == 3]
        raise RunyardError(
            f"{where}: {model} draws the images of a labelled image dataset and {dataset} is not one; "
            f"allowed datasets: {', '.join(fitting)}"
        )
    return dataclasses.replace(info, task=task)


def model_inputs(net: nn.Module, x: np.ndarray) -> np.ndarray:
    """What ``net`` takes in place of the data samples ``x``: the samples themselves, or for
    a generator (a net with a ``latent_shape``) as many normal latent codes, always the same
    ones (seed 0). A generator's outputs "for the test split" are so as many generated images."""
    import numpy as np

    shape = getattr(net, "latent_shape", None)
    if shape is None:
        return x
    return np.random.default_rng(0).standard_normal((len(x), *shape)).astype(np.float32)


def component(name: str):
    if name not in ALL_MODELS:
        raise RunyardError(f"unknown model {name!r}; allowed: {', '.join(ALL_MODELS)}")
    module, attr = ALL_MODELS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def check_model_spec(spec: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate a ``model:`` section against its component's signature; return typed kwargs."""
    from pydantic import ValidationError

    from runyard.config import format_validation_error, kwargs_model

    name = spec.get("name")
    if name not in ALL_MODELS:
        raise RunyardError(f"{where}.name: unknown model {name!r}; allowed: {', '.join(ALL_MODELS)}")
    if is_classical(name):
        from runyard.models.classical import INJECTED as skip
    else:
        skip = INJECTED
    args_model = kwargs_model(component(name), skip=skip)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    try:
        return args_model.model_validate(kwargs).model_dump()
    except ValidationError as e:
        raise RunyardError(format_validation_error(e, args_model, where)) from None


def check_model_fits(spec: dict[str, Any], info, dataset: str, where: str) -> None:
    """Build the model and run two dummy samples through it: a model that cannot take
    the dataset's inputs fails here, in a blink, not on a Ray worker after a run exists."""
    if is_classical(spec["name"]):
        # Any input shape fits (it is flattened); scikit-learn checks its arguments only at
        # fit time, and check_model_spec has checked them already.
        if info.task != "classification":
            from runyard.data import DATASETS, dataset_info

            fitting = [d for d in DATASETS if dataset_info(d).task == "classification"]
            raise RunyardError(
                f"{where}: {spec['name']} is a classifier and {dataset} is a {info.task} dataset; "
                f"allowed datasets: {', '.join(fitting)}"
            )
        return

    import torch

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
    if len(out) != 2 or not info.fits_output(tuple(out.shape)[1:]):
        need = tuple(info.output_shape)
        if None in need:  # detection: any number of queries, enough for the objects
            need = f"({', '.join(f'>= {info.max_objects} queries' if n is None else str(n) for n in need)})"
        raise RunyardError(
            f"{where}: {spec['name']} gives outputs {tuple(out.shape)[1:]} per sample, {dataset} needs {need}"
        )


def build_model(spec: dict[str, Any], input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    if is_classical(spec.get("name")):
        raise RunyardError(f"model {spec['name']!r} is a scikit-learn estimator: use build_estimator")
    kwargs = check_model_spec(spec, where="model")
    return component(spec["name"])(tuple(input_shape), num_outputs, **kwargs)


def build_estimator(spec: dict[str, Any], seed: int):
    """An unfitted scikit-learn estimator for a classical ``model:`` section."""
    if not is_classical(spec.get("name")):
        raise RunyardError(f"model {spec.get('name')!r} is not a classical model; allowed: {', '.join(CLASSICAL)}")
    kwargs = check_model_spec(spec, where="model")
    return component(spec["name"])(seed, **kwargs)
