"""Tracking URIs: make embedded ones absolute, and fail fast when a server is down."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from runyard.errors import RunyardError


def resolve(uri: str, root: Path) -> str:
    """Anchor a relative sqlite/file URI at the project root.

    Ray workers do not share the driver's working directory, so every process
    must get the same absolute path.
    """
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(root / uri.removeprefix('sqlite:///')).resolve()}"
    if "://" not in uri:
        return str((root / uri).resolve())
    return uri


def artifact_location(root_setting: str, root: Path, experiment: str) -> str:
    if "://" in root_setting:
        return f"{root_setting.rstrip('/')}/{experiment}"
    return (root / root_setting / experiment).resolve().as_uri()


def check_reachable(uri: str, where: str) -> None:
    """Raise one line if the tracking store cannot be used, before any work starts."""
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        db = Path(uri.removeprefix("sqlite:///"))
        parent = db.parent
        if not parent.exists():
            try:
                parent.mkdir(parents=True)
            except OSError as e:
                raise RunyardError(f"{where}: cannot create {parent}: {e.strerror}") from None
        if not os.access(parent, os.W_OK):
            raise RunyardError(f"{where}: {parent} is not writable")
        return
    if scheme in ("http", "https"):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5)
        except requests.RequestException as e:
            reason = type(e).__name__
            raise RunyardError(f"{where}: tracking server {uri} is unreachable ({reason})") from None
        return
    if scheme in ("", "file"):
        raise RunyardError(
            f"{where}: {uri!r}: the file store is deprecated in MLflow; "
            "allowed: sqlite:///PATH, http(s)://SERVER, postgresql://..."
        )
