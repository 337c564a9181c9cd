"""The lifecycle of one MLflow run: created once by the driver, always ended.

Whatever happens inside ``tracked_run`` (an exception, Ctrl-C, SIGTERM from
`ray job stop` or DVC), the run ends FAILED or KILLED, never left RUNNING.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlflow
from mlflow import MlflowClient


def use_tracking(uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str) -> str:
    """The experiment's id, creating it with its artifacts at ``artifact_location``.

    On a tracking server a local path (the embedded default, ``mlflow.artifact_root:
    mlruns/artifacts``) would put artifacts on whichever machine logged them: the
    server's own store (``--artifacts-destination``, e.g. S3) is used instead. A URI
    (``s3://...``) is used as it is."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if client.tracking_uri.startswith(("http://", "https://")) and artifact_location.startswith("file:"):
        artifact_location = None
    return client.create_experiment(name, artifact_location=artifact_location)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> MLflow params ``recipe.lr``; lists stay JSON."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | dict) else str(v)
    return out


@contextmanager
def tracked_run(
    experiment_id: str,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    resume_run_id: str | None = None,
) -> Iterator[str]:
    """Start (or reopen) a run, yield its id, and always end it with a final status."""
    if resume_run_id:
        run = mlflow.start_run(run_id=resume_run_id)
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
        mlflow.log_params(flatten(params))
    try:
        yield run.info.run_id
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM via the CLI's handler
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")
