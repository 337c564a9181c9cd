"""`runyard ui`: the MLflow UI on the project's tracking store, on loopback only.

The README, the Makefile's `make ui` and the end-to-end test all start it this way.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from runyard.errors import RunyardError
from runyard.tracking.uri import check_reachable, resolve

HOST = "127.0.0.1"  # the embedded store has no auth: never serve it beyond this machine
# One worker is plenty for one person's browser, and MLflow's job runner (GenAI judges,
# seven queue consumers) is of no use here: without both, the UI starts several times
# faster and holds one process instead of a dozen.
WORKERS = "1"
ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def command(project, port: int) -> list[str]:
    """The `mlflow ui` command line for ``project``'s tracking store on HOST:``port``."""
    where = f"{project.rel(project.params_file)}: mlflow.tracking_uri"
    uri = resolve(project.params.tracking_uri, project.root)
    if uri.startswith(("http://", "https://")):
        raise RunyardError(f"{where}: {uri} is a tracking server; open its own UI at that address")
    check_reachable(uri, where)
    local = Path(sys.executable).with_name("mlflow")
    mlflow = str(local) if local.is_file() else shutil.which("mlflow")
    if mlflow is None:
        raise RunyardError("mlflow: command not found; install runyard's dependencies (make setup)")
    return [mlflow, "ui", "--backend-store-uri", uri, "--host", HOST, "--port", str(port), "--workers", WORKERS]
