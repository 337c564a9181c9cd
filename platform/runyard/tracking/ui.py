"""`runyard ui`: the MLflow UI on the project's tracking store, on loopback only.

The README, the Makefile's `make ui` and the end-to-end test all start it this way.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from urllib.parse import quote

from runyard.errors import RunyardError
from runyard.tracking.client import Tracking
from runyard.tracking.uri import check_reachable, resolve

HOST = "127.0.0.1"  # the embedded store has no auth: never serve it beyond this machine
# One worker is plenty for one person's browser, and MLflow's job runner (GenAI judges,
# seven queue consumers) is of no use here: without both, the UI starts several times
# faster and holds one process instead of a dozen.
WORKERS = "1"
ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# MLflow 3's UI opens an experiment on its GenAI view (traces) unless the page's URL, or
# a choice the browser remembers from a click on its switch, says "machine_learning";
# the experiment's own kind tag does not change that, and the experiments list's links
# drop the parameter. So the address printed is the runs view itself, of every
# experiment of the project at once, with the parameter: a fresh browser lands on runs.
VIEW = "workflowType=machine_learning"


def url(port: int, experiment_ids: list[str] | None = None) -> str:
    """The one address to open: the runs of ``experiment_ids`` side by side (MLflow's
    compare-experiments view; one experiment: its own runs page) on the model-training
    view; without any, the experiments list."""
    base = f"http://{HOST}:{port}/#/"
    if not experiment_ids:
        return f"{base}experiments?{VIEW}"
    ids = quote(json.dumps(sorted(experiment_ids), separators=(",", ":")))
    return f"{base}compare-experiments/s?experiments={ids}&{VIEW}"


def project_experiments(project) -> list[str]:
    """The MLflow experiment of each of the project's pipelines, created (with its kind and
    description) where it does not exist yet, so the UI lists every one; their ids. A
    pipeline that does not load is left out with one line on stderr: the UI still opens."""
    tracking, ids = Tracking.of(project), []
    for name in project.experiment_names():
        try:
            exp = project.experiment(name)
        except RunyardError as e:
            print(f"runyard ui: {name} left out: {e}", file=sys.stderr)
            continue
        ids.append(tracking.experiment_id(exp))
    return ids


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
