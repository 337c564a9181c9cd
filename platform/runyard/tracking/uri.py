"""Tracking URIs: make embedded ones absolute, and fail fast when a server is down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from runyard.errors import RunyardError

if TYPE_CHECKING:
    from runyard.project import Project


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


def project_tracking_uri(project: Project) -> str:
    """The project's tracking URI, resolved against its root and checked to be usable."""
    uri = resolve(project.params.tracking_uri, project.root)
    where = f"{project.rel(project.params_file)}: mlflow.tracking_uri"
    check_reachable(uri, where="MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else where)
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
        _check_server(uri, where)
        return
    if scheme in ("", "file"):
        raise RunyardError(
            f"{where}: {uri!r}: the file store is deprecated in MLflow; "
            "allowed: sqlite:///PATH, http(s)://SERVER, postgresql://..."
        )


def _check_server(uri: str, where: str) -> None:
    """The server answers, and lets us in with the credentials MLflow will send.

    /health needs no credentials, so an authenticated request follows: a server with
    auth on and no or wrong MLFLOW_TRACKING_USERNAME/PASSWORD fails here, in one line,
    rather than after Ray started and a model trained."""
    import requests
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    base = uri.rstrip("/")
    try:
        requests.get(base + "/health", timeout=5)
        creds = get_default_host_creds(base)
        response = http_request(
            creds, "/api/2.0/mlflow/experiments/search", "GET", params={"max_results": 1},
            max_retries=0, timeout=30, raise_on_status=False,
        )
    except Exception as e:  # requests' and MLflow's connection errors alike
        reason = type(e).__name__
        raise RunyardError(f"{where}: tracking server {uri} is unreachable ({reason})") from None
    status = response.status_code
    if status == 401:
        if creds.username or creds.token:
            who = f"user {creds.username!r}" if creds.username else "MLFLOW_TRACKING_TOKEN"
            raise RunyardError(f"{where}: tracking server {uri} refused the credentials of {who} (401): "
                               "check MLFLOW_TRACKING_USERNAME/PASSWORD")
        raise RunyardError(f"{where}: tracking server {uri} requires credentials (401): "
                           "set MLFLOW_TRACKING_USERNAME/PASSWORD")
    if status == 403:
        raise RunyardError(f"{where}: tracking server {uri}: user {creds.username!r} may not read experiments (403)")
    if status >= 400:
        raise RunyardError(f"{where}: tracking server {uri} answered {status} to an experiment search")
