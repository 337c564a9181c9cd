"""Reading the configuration files: YAML with one-line errors, settings from the
environment, and pipelines that extend other pipelines."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from runyard.errors import RunyardError

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


def read_yaml(path: Path, where: str) -> Any:
    if not path.is_file():
        raise RunyardError(f"{where}: file not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise RunyardError(f"{where}: not valid YAML{line}: {getattr(e, 'problem', e)}") from None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if both else value
    return out


def resolve_extends(raw: Any, read: Callable[[str], tuple[Any, str] | None], where: str,
                    chain: tuple[str, ...] = ()) -> Any:
    """A pipeline's raw mapping with its ``extends:`` chain merged in (the base first).

    ``read(name)`` gives another pipeline's raw mapping and where it lives (None: there is
    no such pipeline); the merged mapping keeps ``extends`` (part of the experiment's config)."""
    if not isinstance(raw, dict) or raw.get("extends") is None:
        return raw
    base_name = raw["extends"]
    if not isinstance(base_name, str):
        raise RunyardError(f"{where}: extends: must be the name of another pipeline (got {base_name!r})")
    if base_name in chain:
        raise RunyardError(f"{where}: extends: {base_name!r} extends this pipeline in turn (a cycle)")
    found = read(base_name)
    if found is None:
        raise RunyardError(f"{where}: extends: no pipeline {base_name!r} (pipelines/{base_name}.yaml)")
    base_raw, base_where = found
    base = resolve_extends(base_raw, read, base_where, (*chain, base_name))
    if not isinstance(base, dict):
        return raw
    base = {k: v for k, v in base.items() if k not in ("extends", "description")}
    return merge(base, raw)
