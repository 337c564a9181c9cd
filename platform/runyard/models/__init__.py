"""Model registry: a name in a pipeline's ``model:`` section -> a component (lazy import).

Adding an architecture = one component here and one line in MODELS; the
classifier / regressor / segmenter systems train any of them.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from runyard.errors import RunyardError

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
}

# Arguments the dataset fills in; a pipeline may not set them.
INJECTED = {"input_shape", "num_outputs"}

METRICS = {
    "classification": ("val/acc", "val/loss", "train/acc", "train/loss"),
    "node_classification": ("val/acc", "val/loss", "train/acc", "train/loss"),
    "regression": ("val/mse", "val/loss", "train/mse", "train/loss"),
    "segmentation": ("val/iou", "val/dice", "val/loss", "train/iou", "train/dice", "train/loss"),
}


def metrics_for(task: str) -> tuple[str, ...]:
    return METRICS[task]


def component(name: str):
    if name not in MODELS:
        raise RunyardError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    module, attr = MODELS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def check_model_spec(spec: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate a ``model:`` section against its component's signature; return typed kwargs."""
    from runyard.config import format_validation_error, kwargs_model

    name = spec.get("name")
    if name not in MODELS:
        raise RunyardError(f"{where}.name: unknown model {name!r}; allowed: {', '.join(MODELS)}")
    args_model = kwargs_model(component(name), skip=INJECTED)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    from pydantic import ValidationError

    try:
        return args_model.model_validate(kwargs).model_dump()
    except ValidationError as e:
        raise RunyardError(format_validation_error(e, args_model, where)) from None


def check_model_fits(spec: dict[str, Any], info, dataset: str, where: str) -> None:
    """Build the model and run two dummy samples through it: a model that cannot take
    the dataset's inputs fails here, in a blink, not on a Ray worker after a run exists."""
    import torch

    try:
        net = build_model(spec, info.input_shape, info.num_outputs)
        with torch.no_grad():
            out = net.eval()(torch.zeros(2, *info.input_shape))
    except RunyardError:
        raise
    except Exception as e:  # noqa: BLE001 (any failure means the model does not fit)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunyardError(
            f"{where}: {spec['name']} does not fit {dataset} inputs of shape {tuple(info.input_shape)}: {first}"
        ) from None
    if tuple(out.shape) != (2, *info.output_shape):
        raise RunyardError(
            f"{where}: {spec['name']} gives outputs {tuple(out.shape)[1:]} per sample, "
            f"{dataset} needs {tuple(info.output_shape)}"
        )


def build_model(spec: dict[str, Any], input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    kwargs = check_model_spec(spec, where="model")
    return component(spec["name"])(tuple(input_shape), num_outputs, **kwargs)
