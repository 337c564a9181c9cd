"""Typed configuration: params.yaml (shared knobs) and pipelines/<experiment>.yaml.

Every model forbids unknown keys. Any problem becomes one ``RunyardError`` line
naming the file, the dotted key and what is allowed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from runyard.errors import RunyardError

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- params.yaml


class RayParams(Strict):
    address: str | None = None
    """None: a local Ray on 127.0.0.1 started on demand. Otherwise a cluster address
    (``auto``, ``HOST:6379`` or ``ray://HOST:10001``). RAY_ADDRESS overrides it."""
    num_workers: PositiveInt = 1
    use_gpu: bool = False
    cpus_per_worker: PositiveFloat = 1
    resources_per_worker: dict[str, PositiveFloat] = {}
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: Annotated[int, Field(ge=0)] = 0
    checkpoint_every: Annotated[int, Field(ge=0)] = 0
    """Epochs between checkpoints; 0 keeps only the final model."""
    storage_path: str | None = None
    """Where Ray Train persists checkpoints; None: .runyard/ray in the project.
    On a multi-node cluster this must be shared storage (NFS path or s3://)."""


class MlflowParams(Strict):
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"
    champion_alias: str = "champion"


class Params(Strict):
    seed: int = 0
    ray: RayParams = RayParams()
    mlflow: MlflowParams = MlflowParams()
    datasets: dict[str, dict[str, Any]] = {}
    """Per-dataset builder arguments, validated by the builder's own model."""
    experiments: dict[str, str] = {}
    """The experiments ``dvc repro`` runs: experiment name -> the dataset it reads."""

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or self.mlflow.tracking_uri


# --------------------------------------------------------------------------- pipelines/*.yaml


class Schedule(Strict):
    name: Literal["constant", "step", "cosine", "exponential"] = "constant"
    step_size: PositiveInt = 30
    """Epochs between decays for ``step``."""
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    """Decay factor for ``step`` (per step_size) and ``exponential`` (per epoch)."""
    min_lr: NonNegativeFloat = 0.0
    """Floor for ``cosine``."""


class EarlyStopping(Strict):
    patience: PositiveInt = 10
    min_delta: NonNegativeFloat = 0.0


class Recipe(Strict):
    optimizer: Literal["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"] = (
        "adam"
    )
    lr: PositiveFloat = 1e-3
    momentum: Fraction = 0.9
    """Used by momentum, nesterov and rmsprop."""
    weight_decay: NonNegativeFloat = 0.0
    """L2 penalty, applied by the optimizer."""
    l1: NonNegativeFloat = 0.0
    """L1 penalty on weights, added to the loss."""
    batch_size: PositiveInt = 100
    """Global batch size: split across Ray workers, so results do not change with N."""
    epochs: PositiveInt | None = None
    steps: PositiveInt | None = None
    schedule: Schedule = Schedule()
    early_stopping: EarlyStopping | None = None
    gradient_clip: PositiveFloat | None = None

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> Recipe:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("set exactly one of recipe.epochs and recipe.steps")
        return self


class Experiment(Strict):
    name: str
    """Filled from the file name; not written in the YAML."""
    description: str = ""
    dataset: str
    model: dict[str, Any]
    """``name`` picks the component; every other key is one of its constructor's arguments."""
    recipe: Recipe | None = None
    """Required for deep models; not allowed for classical (scikit-learn) ones, which fit in one go."""
    optimized_metric: str = "val/acc"
    """The one metric training, tuning and registration all optimise."""
    optimized_mode: Literal["max", "min"] = "max"

    @property
    def model_name(self) -> str:
        return self.model["name"]

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}

    def digest(self) -> str:
        """Stable hash of the resolved config: the same experiment gives the same digest."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------- the project


class Project:
    """A runyard project: the directory holding params.yaml, dvc.yaml and pipelines/."""

    def __init__(self, root: Path):
        self.root = root.resolve()

    @classmethod
    def find(cls, start: Path | None = None) -> Project:
        here = (start or Path.cwd()).resolve()
        for d in (here, *here.parents):
            if (d / "params.yaml").is_file() and (d / "pipelines").is_dir():
                return cls(d)
        raise RunyardError(
            f"{here}: not inside a runyard project (no params.yaml and pipelines/ here or above)"
        )

    # -- paths
    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    def pipeline_file(self, experiment: str) -> Path:
        return self.root / "pipelines" / f"{experiment}.yaml"

    def data_dir(self, dataset: str) -> Path:
        return self.root / "data" / dataset

    def model_dir(self, experiment: str) -> Path:
        return self.root / "models" / experiment

    def metrics_file(self, experiment: str) -> Path:
        return self.root / "metrics" / f"{experiment}.json"

    def plots_dir(self, experiment: str) -> Path:
        return self.root / "plots" / experiment

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def experiment_names(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "pipelines").glob("*.yaml"))

    # -- loading
    @cached_property
    def params(self) -> Params:
        raw = read_yaml(self.params_file, self.rel(self.params_file))
        params = validate(Params, raw, self.rel(self.params_file))
        self._check_params_names(params)
        return params

    def _check_params_names(self, params: Params) -> None:
        from runyard.data import DATASETS, dataset_params

        where = self.rel(self.params_file)
        for name, args in params.datasets.items():
            if name not in DATASETS:
                raise RunyardError(
                    f"{where}: datasets.{name}: unknown dataset; allowed: {', '.join(DATASETS)}"
                )
            dataset_params(name, args, where=f"{where}: datasets.{name}")
        for exp, ds in params.experiments.items():
            if not self.pipeline_file(exp).is_file():
                raise RunyardError(
                    f"{where}: experiments.{exp}: no file {self.rel(self.pipeline_file(exp))}; "
                    f"allowed: {', '.join(self.experiment_names())}"
                )
            if ds not in DATASETS:
                raise RunyardError(
                    f"{where}: experiments.{exp}: unknown dataset {ds!r}; "
                    f"allowed: {', '.join(DATASETS)}"
                )

    def dataset_args(self, dataset: str):
        """The typed builder arguments for one dataset (defaults where params.yaml is silent)."""
        from runyard.data import DATASETS, dataset_params

        if dataset not in DATASETS:
            raise RunyardError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
        where = f"{self.rel(self.params_file)}: datasets.{dataset}"
        return dataset_params(dataset, self.params.datasets.get(dataset, {}), where=where)

    def experiment(self, name: str) -> Experiment:
        path = self.pipeline_file(name)
        if not path.is_file():
            raise RunyardError(
                f"{self.rel(path)}: no such experiment {name!r}; "
                f"allowed: {', '.join(self.experiment_names()) or '(none)'}"
            )
        where = self.rel(path)
        raw = read_yaml(path, where)
        if isinstance(raw, dict) and "name" in raw:
            raise RunyardError(f"{where}: name: not allowed; the file name is the experiment name")
        _refuse_classical_recipe(raw, where)
        exp = validate(Experiment, {"name": name, **(raw or {})}, where)
        self._check_experiment(exp, where)
        return exp

    def _check_experiment(self, exp: Experiment, where: str) -> None:
        from runyard.data import DATASETS, dataset_info
        from runyard.models import check_model_fits, check_model_spec, is_classical, metrics_for

        if exp.dataset not in DATASETS:
            raise RunyardError(
                f"{where}: dataset: unknown dataset {exp.dataset!r}; allowed: {', '.join(DATASETS)}"
            )
        mapped = self.params.experiments.get(exp.name)
        if mapped is not None and mapped != exp.dataset:
            raise RunyardError(
                f"{self.rel(self.params_file)}: experiments.{exp.name}: says dataset {mapped!r} "
                f"but {where} says {exp.dataset!r}; make them agree"
            )
        check_model_spec(exp.model, where=f"{where}: model")
        classical = is_classical(exp.model_name)
        if not classical and exp.recipe is None:
            raise RunyardError(f"{where}: recipe: required key is missing (model {exp.model_name} is trained with one)")
        check_model_fits(exp.model, dataset_info(exp.dataset), exp.dataset, where=f"{where}: model")
        task = dataset_info(exp.dataset).task
        allowed = metrics_for(task, exp.model_name)
        if exp.optimized_metric not in allowed:
            logged_by = f"classical model {exp.model_name}" if classical else f"a {task} dataset"
            raise RunyardError(
                f"{where}: optimized_metric: {exp.optimized_metric!r} is not logged for "
                f"{logged_by}; allowed: {', '.join(allowed)}"
            )


# --------------------------------------------------------------------------- helpers


def _refuse_classical_recipe(raw: Any, where: str) -> None:
    """A scikit-learn model has no optimizer, epochs or batches: a recipe for one is a mistake.

    Checked on the raw YAML, so even an empty or half-written recipe gets this message."""
    if not (isinstance(raw, dict) and "recipe" in raw and isinstance(raw.get("model"), dict)):
        return
    from runyard.models import is_classical

    name = raw["model"].get("name")
    if is_classical(name):
        raise RunyardError(
            f"{where}: recipe: not used by {name}, a scikit-learn model fitted in one go; remove the section"
        )


def read_yaml(path: Path, where: str) -> Any:
    if not path.is_file():
        raise RunyardError(f"{where}: file not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise RunyardError(f"{where}: not valid YAML{line}: {getattr(e, 'problem', e)}") from None


def validate(model: type[BaseModel], raw: Any, where: str) -> Any:
    """Validate ``raw`` against ``model``; on failure raise one line naming the key."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise RunyardError(format_validation_error(e, model, where)) from None


def format_validation_error(e: ValidationError, model: type[BaseModel], where: str) -> str:
    err = e.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"] if p != "name" or len(err["loc"]) > 1]
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(model, err["loc"][:-1])
        msg = f"unknown key; allowed: {', '.join(allowed)}"
    elif err["type"] == "missing":
        msg = "required key is missing"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if "input" in err and not isinstance(err["input"], dict):
            msg += f" (got {err['input']!r})"
    more = len(e.errors()) - 1
    suffix = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
    return f"{where}: {key}: {msg}{suffix}"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names allowed at a nested location of a pydantic model."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            break
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        current = next((c for c in candidates if inspect.isclass(c) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return [f for f in getattr(current, "model_fields", {}) if f != "name" or current is not Experiment]


def kwargs_model(fn, skip: set[str]) -> type[BaseModel]:
    """A strict pydantic model of ``fn``'s keyword arguments (types, ranges and defaults)."""
    fields = {}
    for p in inspect.signature(fn, eval_str=True).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = Any if p.annotation is p.empty else p.annotation
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (ann, default)
    return create_model(f"{fn.__qualname__}Args", __config__=ConfigDict(extra="forbid"), **fields)
