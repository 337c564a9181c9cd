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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

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
    retry_s: Annotated[float, Field(gt=0, le=86400)] = 120
    """How long a training rides out a tracking server that does not answer (metrics
    buffered, the run's end retried) before it fails; see runyard.tracking.outage."""


class TuneParams(Strict):
    study_storage: str = "sqlite:///mlruns/optuna.db"
    """Optuna's durable study state (an RDB URL). OPTUNA_STORAGE wins."""


class Finetune(Strict):
    dataset: str
    source: str = Field(alias="from")
    """The experiment whose trained model it starts from (its pipeline's ``init.from``)."""


class Catalogue(Strict):
    """The rest of the course's experiments: stages of pipelines/catalogue/dvc.yaml, which
    plain ``dvc repro`` does not run. ``experiments`` and ``searches`` map a name to its
    dataset, like the top-level keys; ``finetunes`` also names the model each starts from,
    so that DVC trains the source first."""

    experiments: dict[str, str] = {}
    searches: dict[str, str] = {}
    finetunes: dict[str, Finetune] = {}


class Params(Strict):
    seed: int = 0
    ray: RayParams = RayParams()
    mlflow: MlflowParams = MlflowParams()
    tune: TuneParams = TuneParams()
    datasets: dict[str, dict[str, Any]] = {}
    """Per-dataset builder arguments, validated by the builder's own model."""
    experiments: dict[str, str] = {}
    """The experiments ``dvc repro`` runs: experiment name -> the dataset it reads."""
    searches: dict[str, str] = {}
    """The searches ``dvc repro`` runs (``tune@<name>``): experiment name -> its dataset."""
    catalogue: Catalogue = Catalogue()

    def dataset_maps(self) -> dict[str, dict[str, str]]:
        """Every experiment -> dataset map, by its key in params.yaml."""
        return {"experiments": self.experiments, "searches": self.searches,
                "catalogue.experiments": self.catalogue.experiments,
                "catalogue.searches": self.catalogue.searches,
                "catalogue.finetunes": {k: v.dataset for k, v in self.catalogue.finetunes.items()}}

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or self.mlflow.tracking_uri

    @property
    def study_storage(self) -> str:
        return os.environ.get("OPTUNA_STORAGE") or self.tune.study_storage


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


class Augment(Strict):
    """Random transforms of the training images (never validation or test), drawn
    afresh for every sample of every epoch. All off (0) unless set."""

    shift: Annotated[int, Field(ge=0)] = 0
    """Largest shift in pixels, along each axis: a uniform integer in [-shift, shift]."""
    rotate_deg: Annotated[float, Field(ge=0, le=180)] = 0.0
    """Largest rotation in degrees, either way, about the image centre."""
    noise: NonNegativeFloat = 0.0
    """Std of Gaussian noise added to every pixel (after the geometric transform)."""


class Recipe(Strict):
    optimizer: Literal["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"] = (
        "adam"
    )
    lr: PositiveFloat = 1e-3
    momentum: Fraction = 0.9
    """Used by momentum, nesterov and rmsprop; adam and adamw take it as beta1 (their
    default is 0.9 too; DCGAN's is 0.5)."""
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
    augment: Augment | None = None
    """Data augmentation of training batches (image datasets); None: off."""
    train_samples: PositiveInt | None = None
    """Train on a random subset of this many training samples (little data); None: all."""
    label_noise: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Fraction of training labels replaced by uniformly random classes (classifiers;
    1.0: random labels). Validation and test labels stay true."""

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> Recipe:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("set exactly one of recipe.epochs and recipe.steps")
        return self


class Domain(Strict):
    """One searched value: exactly one of these keys, e.g. ``{loguniform: [1e-4, 1e-1]}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[PositiveFloat, PositiveFloat] | None = None
    integer: tuple[int, int] | None = Field(None, alias="int")
    """Inclusive bounds."""
    choice: list[Any] | None = Field(None, min_length=1)
    grid: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Domain:
        set_ = [k for k in ("uniform", "loguniform", "integer", "choice", "grid") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError("give exactly one of uniform, loguniform, int, choice, grid")
        bounds = getattr(self, set_[0])
        if set_[0] in ("uniform", "loguniform", "integer") and not bounds[0] < bounds[1]:
            raise ValueError(f"empty or inverted range {list(bounds)}: need low < high")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("uniform", "loguniform", "integer", "choice", "grid") if getattr(self, k) is not None)

    @property
    def values(self) -> Any:
        return getattr(self, self.kind)

    def corners(self) -> list[Any]:
        """The values worth checking before a search starts: the bounds, or every option."""
        return list(self.values)


class Search(Strict):
    """A hyperparameter search over keys of this experiment (``model.*``, ``recipe.*``)."""

    algorithm: Literal["grid", "random", "tpe"] = "tpe"
    scheduler: Literal["fifo", "asha", "hyperband", "pbt"] = "asha"
    num_samples: PositiveInt = 8
    """Trials to run (with algorithm grid: repeats of the whole grid)."""
    max_concurrent: PositiveInt = 2
    time_budget_s: PositiveFloat | None = None
    """Stop starting and running trials after this many seconds."""
    workers_per_trial: PositiveInt = 1
    """Above 1, each trial is itself a data-parallel Ray Train run."""
    cpus_per_worker: PositiveFloat = 1
    grace_period: PositiveInt = 2
    """Epochs every trial gets before ASHA / HyperBand may stop it."""
    reduction_factor: Annotated[float, Field(gt=1)] = 3
    perturbation_interval: PositiveInt = 2
    """PBT: epochs between exploit/explore steps."""
    space: dict[str, Domain] = Field(min_length=1)

    @model_validator(mode="after")
    def _algorithm_fits_space(self) -> Search:
        kinds = {d.kind for d in self.space.values()}
        if self.algorithm == "tpe" and "grid" in kinds:
            raise ValueError("grid values need algorithm grid or random; tpe samples: use choice")
        if self.algorithm == "grid" and kinds - {"grid", "choice"}:
            raise ValueError("algorithm grid takes only grid or choice values")
        if self.scheduler == "pbt" and self.algorithm == "tpe":
            raise ValueError("scheduler pbt mutates trials itself: use algorithm random")
        return self


class CrossValidation(Strict):
    folds: Annotated[int, Field(ge=2, le=20)] = 5


class Adversarial(Strict):
    """Test accuracy under an adversarial attack, at each perturbation size."""

    attack: Literal["fgsm"] = "fgsm"
    """fgsm: one step of size epsilon along the sign of the loss gradient (Goodfellow et al. 2015)."""
    epsilons: list[NonNegativeFloat] = Field(min_length=1)
    """Largest change of any input value (L-infinity), in the dataset's input units."""
    clip: tuple[float, float] | None = None
    """The valid input range, e.g. [0, 1] for pixel intensities; None: unbounded."""

    @field_validator("clip")
    @classmethod
    def _ordered(cls, v):
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"empty or inverted range {list(v)}: need low < high")
        return v


class Evaluation(Strict):
    """What the evaluate stage measures beyond the task's test metrics."""

    adversarial: Adversarial | None = None


class Reference(Strict):
    """A published result to compare with, e.g. the MNIST-1D paper's 94% for its CNN."""

    value: float
    metric: str = "test/acc"
    source: str


class Subset(Strict):
    """Part of a classification dataset (``runyard.data.view``): some classes, few labels."""

    classes: list[Annotated[int, Field(ge=0)]] = Field(min_length=2)
    """The classes kept, relabelled 0..k-1 in this order."""
    train_per_class: PositiveInt | None = None
    """Training samples kept per class (validation and test keep all); None: all."""

    @field_validator("classes")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"classes repeat: {value}")
        return value


class Init(Strict):
    """Start from another experiment's trained weights (``runyard.models.transfer``):
    transfer learning, or an unsupervised pretraining later fine-tuned."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)
    source: str = Field(alias="from")
    """The experiment whose trained model (models/<from>/) supplies the weights."""
    part: str = "all"
    """``all``, or a module of the model (``features``): the weights copied; the rest starts fresh."""
    freeze: list[str] = []
    """Modules (prefixes such as ``features`` or ``features.4``) not trained at first."""
    unfreeze_every: PositiveInt | None = None
    """Gradual unfreezing: every this many epochs, the top frozen layer starts training."""
    lr_groups: dict[str, PositiveFloat] = {}
    """Module prefix -> learning-rate multiplier (of ``recipe.lr``); the longest prefix wins."""

    @model_validator(mode="after")
    def _unfreeze_needs_freeze(self) -> Init:
        if self.unfreeze_every is not None and not self.freeze:
            raise ValueError("unfreeze_every needs modules listed under freeze")
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
    search: Search | None = None
    """Used by ``runyard tune``; ``runyard train`` trains the config as written."""
    cv: CrossValidation | None = None
    """k-fold cross-validation on train + val: the folds train as parallel Ray tasks."""
    reference: Reference | None = None
    task: Literal["reconstruction"] | None = None
    """None: the dataset's own task; ``reconstruction``: the inputs are the targets (labels unused)."""
    subset: Subset | None = None
    """Only some classes of a classification dataset, and few training labels per class."""
    init: Init | None = None
    """Initial weights from another experiment's trained model; freezing and per-module learning rates."""
    evaluate: Evaluation | None = None
    """Extra evaluations of the trained model (``runyard evaluate``)."""

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

# A deployment (k8s/) sets these instead of editing params.yaml; as with
# MLFLOW_TRACKING_URI and RAY_ADDRESS, a non-empty variable wins.
ENV_SETTINGS = {
    "RUNYARD_ARTIFACT_ROOT": ("mlflow", "artifact_root"),
    "RUNYARD_STORAGE_PATH": ("ray", "storage_path"),
}


def env_settings(raw: Any) -> Any:
    """params.yaml's raw mapping with the ENV_SETTINGS variables that are set applied."""
    if not isinstance(raw, dict):
        return raw
    for var, (section, key) in ENV_SETTINGS.items():
        value = os.environ.get(var, "").strip()
        if value and isinstance(raw.get(section) or {}, dict):
            raw = {**raw, section: {**(raw.get(section) or {}), key: value}}
    return raw



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
        raw = env_settings(read_yaml(self.params_file, self.rel(self.params_file)))
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
        for section, mapping in params.dataset_maps().items():
            for exp, ds in mapping.items():
                if not self.pipeline_file(exp).is_file():
                    raise RunyardError(
                        f"{where}: {section}.{exp}: no file {self.rel(self.pipeline_file(exp))}; "
                        f"allowed: {', '.join(self.experiment_names())}"
                    )
                if ds not in DATASETS:
                    raise RunyardError(
                        f"{where}: {section}.{exp}: unknown dataset {ds!r}; allowed: {', '.join(DATASETS)}"
                    )

    def dataset_args(self, dataset: str):
        """The typed builder arguments for one dataset (defaults where params.yaml is silent)."""
        from runyard.data import DATASETS, dataset_params

        if dataset not in DATASETS:
            raise RunyardError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
        where = f"{self.rel(self.params_file)}: datasets.{dataset}"
        return dataset_params(dataset, self.params.datasets.get(dataset, {}), where=where)

    def dataset_info(self, dataset: str):
        """The dataset's task and shapes with this project's builder arguments."""
        from runyard.data import dataset_info

        return dataset_info(dataset, self.dataset_args(dataset))

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
        from runyard.data import DATASETS
        from runyard.models import check_model_fits, check_model_spec, is_classical, metrics_for

        if exp.dataset not in DATASETS:
            raise RunyardError(
                f"{where}: dataset: unknown dataset {exp.dataset!r}; allowed: {', '.join(DATASETS)}"
            )
        for section, mapping in self.params.dataset_maps().items():
            mapped = mapping.get(exp.name)
            if mapped is not None and mapped != exp.dataset:
                raise RunyardError(
                    f"{self.rel(self.params_file)}: {section}.{exp.name}: says dataset {mapped!r} "
                    f"but {where} says {exp.dataset!r}; make them agree"
                )
        for section in ("searches", "catalogue.searches"):
            if exp.name in self.params.dataset_maps()[section] and exp.search is None:
                raise RunyardError(
                    f"{self.rel(self.params_file)}: {section}.{exp.name}: {where} has no search: section")
        finetune = self.params.catalogue.finetunes.get(exp.name)
        source = exp.init.source if exp.init else None
        if finetune is not None and finetune.source != source:
            raise RunyardError(
                f"{self.rel(self.params_file)}: catalogue.finetunes.{exp.name}.from: says {finetune.source!r} "
                f"but {where} init.from says {source!r}; make them agree"
            )
        info = self._experiment_info(exp, where)
        check_model_spec(exp.model, where=f"{where}: model")
        classical = is_classical(exp.model_name)
        if not classical and exp.recipe is None:
            raise RunyardError(f"{where}: recipe: required key is missing (model {exp.model_name} is trained with one)")
        check_model_fits(exp.model, info, exp.dataset, where=f"{where}: model")
        if exp.recipe is not None and exp.recipe.augment is not None and len(info.input_shape) != 3:
            raise RunyardError(
                f"{where}: recipe.augment: needs images (channels, height, width); "
                f"{exp.dataset} inputs have shape {tuple(info.input_shape)}"
            )
        if exp.recipe is not None and exp.recipe.augment is not None and info.task == "detection":
            raise RunyardError(
                f"{where}: recipe.augment: not supported for detection ({exp.dataset}): the transforms "
                f"would move the shapes but not their boxes; remove the section"
            )
        task = info.task
        if task == "generation" and exp.recipe is not None and exp.recipe.gradient_clip is not None:
            raise RunyardError(f"{where}: recipe.gradient_clip: not supported by {exp.model_name} (two optimisers, "
                               "stepped by hand); remove the key")
        _check_lessons(exp, task, classical, where)
        allowed = metrics_for(task, exp.model_name)
        if exp.optimized_metric not in allowed:
            logged_by = f"classical model {exp.model_name}" if classical else f"a {task} dataset"
            raise RunyardError(
                f"{where}: optimized_metric: {exp.optimized_metric!r} is not logged for "
                f"{logged_by}; allowed: {', '.join(allowed)}"
            )
        if exp.search:
            from runyard.tuning.space import check_space

            check_space(exp, info, where)
        if exp.init:
            from runyard.models.transfer import check_init

            check_init(self, exp, info, where)

    def _experiment_info(self, exp: Experiment, where: str):
        """The dataset's info as the experiment sees it (its ``task:`` and ``subset:``)."""
        from runyard.data.view import view_info

        info = self.dataset_info(exp.dataset)
        if exp.subset is not None:
            if info.task != "classification":
                raise RunyardError(f"{where}: subset: needs a classification dataset; {exp.dataset} is {info.task}")
            bad = [c for c in exp.subset.classes if c >= info.num_classes]
            if bad:
                raise RunyardError(
                    f"{where}: subset.classes: {bad} not in {exp.dataset}; allowed: 0..{info.num_classes - 1}"
                )
        # A model may make the task its own (a GAN draws a labelled image dataset's images).
        from runyard.models import with_model_task

        return with_model_task(exp.model_name, view_info(info, exp), exp.dataset, where=f"{where}: model")

    def experiment_info(self, exp: Experiment):
        """The task and shapes ``exp`` trains on (checked when ``exp`` was loaded)."""
        return self._experiment_info(exp, self.rel(self.pipeline_file(exp.name)))


# --------------------------------------------------------------------------- helpers


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
    fields = getattr(current, "model_fields", {})
    return [fi.alias or f for f, fi in fields.items() if f != "name" or current is not Experiment]


def at_least(lower: str, upper: str):
    """A field validator for ``upper``: it may not be below ``lower`` (declared before it).
    A field validator, not a model validator, so the error names the key it is about."""

    def check(cls, value, info: ValidationInfo):
        low = info.data.get(lower)
        if low is not None and value < low:
            raise ValueError(f"must be at least {lower} ({low})")
        return value

    return field_validator(upper)(classmethod(check))


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
