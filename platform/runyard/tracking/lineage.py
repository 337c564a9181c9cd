"""Lineage tags: everything needed to rebuild a run's model from its record."""

from __future__ import annotations

import contextlib
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

OUTPUTS = (":(exclude)dvc.lock", ":(exclude)metrics", ":(exclude)plots")
PACKAGES = ("runyard", "torch", "lightning", "ray", "mlflow", "dvc", "numpy", "scikit-learn", "skops")


def git_state(root: Path) -> dict[str, str]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"runyard.git.commit": "none", "runyard.git.dirty": "unknown"}
    # What the pipeline writes is not a change to its definition: `dvc repro` updates
    # dvc.lock (and metrics/, plots/) before later stages train, and the data read is
    # recorded by hash below. Anything else uncommitted makes the commit unfaithful.
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":/", *OUTPUTS)
    return {
        "runyard.git.commit": commit,
        "runyard.git.dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
        "mlflow.source.git.commit": commit,
    }


def data_hash(root: Path, dataset: str) -> str:
    """The DVC hash recorded in dvc.lock for data/<dataset>, or 'untracked'."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return "untracked"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") == f"data/{dataset}":
                return out.get("md5", "untracked")
    return "untracked"


def package_versions() -> dict[str, str]:
    tags = {}
    for pkg in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            tags[f"runyard.version.{pkg}"] = version(pkg)
    return tags


def lineage_tags(root: Path, dataset: str, config_digest: str, ray_address: str) -> dict[str, str]:
    return {
        **git_state(root),
        f"runyard.data.{dataset}.md5": data_hash(root, dataset),
        "runyard.config.digest": config_digest,
        "runyard.ray.address": ray_address,
        **package_versions(),
    }
