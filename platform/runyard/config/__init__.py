"""Typed configuration: the schema of params.yaml and pipelines/*.yaml, and how they are read.

``schema`` is pure pydantic, ``validation`` its one-line errors, ``files`` the YAML
reading. Nothing here imports runyard's other layers; ``runyard.project`` loads a
project and ``runyard.checks`` checks what spans layers.
"""

from runyard.config.files import ENV_SETTINGS, env_settings, merge, read_yaml, resolve_extends
from runyard.config.schema import (
    Adversarial,
    Augment,
    Catalogue,
    CrossValidation,
    Domain,
    EarlyStopping,
    Evaluation,
    Experiment,
    Finetune,
    Init,
    MlflowParams,
    Params,
    RayParams,
    Recipe,
    Reference,
    Schedule,
    Search,
    Strict,
    Subset,
    TuneParams,
)
from runyard.config.validation import at_least, fields_at, format_validation_error, kwargs_model, validate

__all__ = [
    "ENV_SETTINGS", "Adversarial", "Augment", "Catalogue", "CrossValidation", "Domain", "EarlyStopping",
    "Evaluation", "Experiment", "Finetune", "Init", "MlflowParams", "Params", "RayParams", "Recipe",
    "Reference", "Schedule", "Search", "Strict", "Subset", "TuneParams", "at_least", "env_settings",
    "fields_at", "format_validation_error", "kwargs_model", "merge", "read_yaml", "resolve_extends", "validate",
]
