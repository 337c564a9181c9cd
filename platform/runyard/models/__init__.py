"""Model registry: a name in a pipeline's ``model:`` section -> a component (lazy import).

Two families share one namespace and one validation:
- deep (``MODELS``): an ``nn.Module`` trained by its task's system (``runyard.tasks``) on Ray Train;
- classical (``CLASSICAL``): a typed factory of a scikit-learn estimator, fitted in one go.

Adding an architecture to runyard = one component (or factory) and one line here. A
user's own ``nn.Module`` needs no line: its import path (``labnets.tabular:ResidualMLP``)
is accepted wherever a name is, and its constructor's arguments are checked alike. So is a
user's ``LightningModule`` (``is_lightning_model``), which brings its own training steps.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import numpy as np
from pydantic import ValidationError
from torch import nn

from runyard.config import format_validation_error, kwargs_model
from runyard.errors import RunyardError
from runyard.models import classical

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

def is_classical(name: Any) -> bool:
    return name in CLASSICAL


def model_inputs(net: nn.Module, x: np.ndarray) -> np.ndarray:
    """What ``net`` takes in place of the data samples ``x``: the samples themselves, or for
    a generator (a net with a ``latent_shape``) as many normal latent codes, always the same
    ones (seed 0). A generator's outputs "for the test split" are so as many generated images."""
    shape = getattr(net, "latent_shape", None)
    if shape is None:
        return x
    return np.random.default_rng(0).standard_normal((len(x), *shape)).astype(np.float32)


def is_import_path(name: Any) -> bool:
    """``package.module:Attr``: a model of the user's own, outside runyard."""
    return isinstance(name, str) and name.count(":") == 1 and all(name.split(":"))


def component(name: str, where: str = "model.name"):
    """The class (or factory) a ``model.name`` names: a built-in name or an import path."""
    if name in ALL_MODELS:
        path = ALL_MODELS[name]
    elif is_import_path(name):
        path = name
    else:
        raise RunyardError(f"{where}: unknown model {name!r}; allowed: {', '.join(ALL_MODELS)}, "
                           "or an import path package.module:Class")
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise RunyardError(f"{where}: {name!r}: no module {e.name!r} (is it in the project folder, "
                           "or installed?)") from None
    if not hasattr(module, attr):
        public = [n for n in vars(module) if not n.startswith("_") and inspect.isclass(getattr(module, n))]
        raise RunyardError(f"{where}: {name!r}: module {module_name} has no {attr!r}; "
                           f"its classes: {', '.join(public) or '(none)'}")
    found = getattr(module, attr)
    if name not in ALL_MODELS and not (inspect.isclass(found) and issubclass(found, nn.Module)):
        raise RunyardError(f"{where}: {name!r} is not a torch.nn.Module subclass (got {type(found).__name__})")
    return found


def _is_lightning_module(cls: type) -> bool:
    # By name: importing Lightning to ask would cost seconds in every command.
    return any(base.__name__ == "LightningModule" and base.__module__.split(".")[0] in ("lightning",
               "pytorch_lightning") for base in cls.__mro__)


def is_lightning_model(name: Any) -> bool:
    """Whether ``model.name`` is a user's ``LightningModule`` (``labnets.lit:WineLit``): it
    trains as its own system (its training_step, validation_step and configure_optimizers)
    instead of being wrapped in its task's. Its ``forward`` gives the task's outputs, so
    everything after training (evaluation, serving, the logged model) treats it as a network."""
    if not is_import_path(name) or name in ALL_MODELS:
        return False
    return _is_lightning_module(component(name))


def user_code_paths(name: Any) -> list[str]:
    """The folder (or file) of the top-level package of a user's model ``pkg.mod:Attr``
    that is not installed: what must travel with Ray workers and the logged model so it
    imports there. Empty for a built-in name or an installed package."""
    if not is_import_path(name) or name in ALL_MODELS:
        return []
    return code_paths_of(name.split(":")[0])


def code_paths_of(module_name: str) -> list[str]:
    """The top-level package folder (or module file) of ``module_name``, unless installed."""
    import importlib.util
    import sysconfig
    from pathlib import Path

    top = module_name.split(".")[0]
    if top == "runyard":  # travels anyway
        return []
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        if spec is not None and spec.submodule_search_locations:  # a namespace package
            return [str(Path(p)) for p in spec.submodule_search_locations]
        return []
    path = Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin)
    installed = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib", "stdlib")}
    if any(path.resolve().is_relative_to(p) for p in installed):
        return []
    return [str(path)]


def check_model_spec(spec: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate a ``model:`` section against its component's signature; return typed kwargs."""
    name = spec.get("name")
    skip = classical.INJECTED if is_classical(name) else INJECTED
    args_model = kwargs_model(component(name, where=f"{where}.name"), skip=skip)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    try:
        return args_model.model_validate(kwargs).model_dump()
    except ValidationError as e:
        raise RunyardError(format_validation_error(e, args_model, where)) from None


def build_model(spec: dict[str, Any], input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    if is_classical(spec.get("name")):
        raise RunyardError(f"model {spec['name']!r} is a scikit-learn estimator: use build_estimator")
    kwargs = check_model_spec(spec, where="model")
    cls = component(spec["name"])
    # A user's module may leave out what it does not need of the dataset's shapes.
    taken = inspect.signature(cls).parameters
    shapes = {"input_shape": tuple(input_shape), "num_outputs": num_outputs}
    any_kw = any(p.kind is p.VAR_KEYWORD for p in taken.values())
    return cls(**{k: v for k, v in shapes.items() if k in taken or any_kw}, **kwargs)


def build_estimator(spec: dict[str, Any], seed: int):
    """An unfitted scikit-learn estimator for a classical ``model:`` section."""
    if not is_classical(spec.get("name")):
        raise RunyardError(f"model {spec.get('name')!r} is not a classical model; allowed: {', '.join(CLASSICAL)}")
    kwargs = check_model_spec(spec, where="model")
    return component(spec["name"])(seed, **kwargs)
