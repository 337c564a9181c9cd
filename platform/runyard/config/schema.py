"""The schema of params.yaml (shared knobs) and pipelines/<experiment>.yaml: pure pydantic.

Every model forbids unknown keys. This module imports nothing of runyard's above
``config``: checks that need datasets or models (a model fits its dataset, a search
space fits its model) live in ``runyard.checks``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runyard.config.validation import format_validation_error
from runyard.errors import RunyardError

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class Strict(BaseModel):
    # Attribute docstrings become field descriptions: the JSON Schema and the docs' key
    # reference show them.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


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
    """Epochs between checkpoints; 0 keeps only the final model (a search trial also
    checkpoints where its scheduler may stop it)."""
    storage_path: str | None = None
    """Where Ray Train persists checkpoints; None: .runyard/ray in the project.
    On a multi-node cluster this must be shared storage (NFS path or s3://)."""
    local_idle_s: Annotated[float, Field(ge=0)] = 600
    """With ``address: null``: seconds the project's shared local Ray (and its warm
    training process) stays up with no runyard command using it; `runyard local down`
    stops it at once. 0: no shared Ray, a private one per command (slower)."""


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
    plain ``dvc repro`` does not run. ``datasets`` holds the data only they read;
    ``experiments`` and ``searches`` map a name to its dataset, like the top-level keys;
    ``finetunes`` also names the model each starts from, so that DVC trains the source first."""

    datasets: dict[str, dict[str, Any]] = {}
    """Built-in datasets only the catalogue reads, with their builder arguments like the
    top-level ``datasets:``; prepared by pipelines/catalogue/dvc.yaml's prepare stages, so
    plain ``dvc repro`` does not build them."""
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
    files: dict[str, dict[str, Any]] = {}
    """Datasets read from your own files (CSV, Parquet, image folders, NumPy arrays): name ->
    ``source:`` (a file or folder DVC tracks) and the keys that read it
    (``runyard.data.files.Args``). A section of its own so that dvc.yaml's ``prepare_files``
    stages list each ``source`` as a dependency."""
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
    shuffle: bool = True
    """Draw the training batches in a new random order every epoch; false: in the data's
    order, the same every epoch (the MNIST-1D paper's training loop)."""
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

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True)
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
    max_failures: Annotated[int, Field(ge=0)] = 2
    """Times a trial restarts from its last epoch's checkpoint after it failed (its process
    or the node it ran on died); a trial's own error repeats as often. 0: it ends errored."""
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

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True,
                              use_attribute_docstrings=True)
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
    HIDDEN: ClassVar[frozenset[str]] = frozenset({"name"})
    """Fields a pipeline file does not write (error messages do not offer them)."""

    name: str
    """Filled from the file name; not written in the YAML."""
    extends: str | None = None
    """Another pipeline (its name) this one starts from: keys here override its keys,
    sections merge key by key. A one-line ablation is then one line."""
    description: str = ""
    """What the experiment shows; the MLflow experiment carries it."""
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

    def with_overrides(self, overrides: dict[str, Any], where: str = "trial") -> Experiment:
        """This experiment with ``overrides`` (dotted keys such as ``recipe.lr``) set,
        validated like a pipeline file (a search trial's config)."""
        raw = self.model_dump(mode="json", by_alias=True)
        for key, value in overrides.items():
            node = raw
            *path, leaf = key.split(".")
            for part in path:
                if not isinstance(node.get(part), dict):
                    node[part] = {}  # e.g. recipe.early_stopping when the file leaves it out
                node = node[part]
            node[leaf] = value
        try:
            return Experiment.model_validate(raw)
        except ValidationError as e:
            raise RunyardError(format_validation_error(e, Experiment, where)) from None
