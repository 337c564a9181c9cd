"""The lifecycle of one MLflow run: created once by the driver, always ended.

Whatever happens inside ``tracked_run`` (an exception, Ctrl-C, SIGTERM from
`ray job stop` or DVC), the run ends FAILED or KILLED, never left RUNNING. A
tracking server that is down at that moment is retried for ``retry_s``; only if it
never answers is the run left open, and the error says so.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import mlflow
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from runyard.tracking.outage import TrackingUnavailable, once, quick_requests, retry_until

RUN_TOKEN_TAG = "runyard.run_token"
"""A run's creation token: the run a cut-off creation stored is found by it, not made twice."""


def use_tracking(uri: str) -> MlflowClient:
    """A client of ``uri``, with MLflow's fluent API pointed there too.

    An embedded (sqlite) store is created under a file lock: two runyard processes that
    open a new store at once (two `dvc repro` in one checkout) would otherwise both run
    its schema migrations, and the second fails on the first's temporary tables."""
    lock = FileLock(uri.removeprefix("sqlite:///") + ".lock") if uri.startswith("sqlite:///") else None
    with lock or contextlib.nullcontext():
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        client = MlflowClient(uri)
        if lock is not None:  # create and migrate the store now, while no one else does
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
    return client


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
"""MLflow 3's own tag for what an experiment holds: "Machine learning" (training runs),
not "GenAI apps & agents" (traces). Its UI shows it on the experiment's page."""


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str, description: str = "") -> str:
    """The experiment's id, creating it with its artifacts at ``artifact_location``.

    On a tracking server a local path (the embedded default, ``mlflow.artifact_root:
    mlruns/artifacts``) would put artifacts on whichever machine logged them: the
    server's own store (``--artifacts-destination``, e.g. S3) is used instead. A URI
    (``s3://...``) is used as it is. ``description`` shows on the experiment's page.
    An experiment created before runyard set its kind and description gets them now."""
    tags = {**EXPERIMENT_KIND, **({"mlflow.note.content": description} if description else {})}
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        for key, value in tags.items():
            if key not in exp.tags:  # a description edited in the UI stays
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    if client.tracking_uri.startswith(("http://", "https://")) and artifact_location.startswith("file:"):
        artifact_location = None
    try:
        return client.create_experiment(name, artifact_location=artifact_location, tags=tags)
    except MlflowException:
        # Another process (`runyard ui`, a parallel stage) created it in the meantime.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


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
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back inside; they are delivered on leaving.

    Held in Python, not with a signal mask: a masked signal goes to any other thread
    (MLflow's, Ray's), and Python runs its handler in the main thread at once anyway.
    Python runs handlers only in the main thread, so elsewhere nothing is held.
    """
    held = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not None]
    if threading.current_thread() is not threading.main_thread() or not held:
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in caught:
            signal.raise_signal(s)


@contextmanager
def tracked_run(
    experiment_id: str,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    resume_run_id: str | None = None,
    retry_s: float = 120.0,
    system_metrics: bool | None = None,
) -> Iterator[str]:
    """Start (or reopen) a run, yield its id, and always end it with a final status.

    ``system_metrics``: MLflow's ``system/*`` metrics (CPU, memory, disk, network, GPU)
    of this machine every 10 s while the run is open; None: MLflow's environment
    variable ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` decides."""
    run_id = None
    try:
        # A signal between the run's creation and this function knowing its id would leave
        # it RUNNING, or worse: MLflow's exit hook ends an active run FINISHED. So Ctrl-C and
        # SIGTERM wait until the id is known, then arrive as usual.
        # Both calls ride out a tracking server outage; a run whose creation was cut off after
        # the server stored it is found by its token, not created twice (``outage.once``).
        with signals_deferred():
            if resume_run_id:
                run = _retry(lambda: mlflow.start_run(run_id=resume_run_id, log_system_metrics=system_metrics),
                             retry_s, f"reopening run {resume_run_id}")
            else:
                token = uuid.uuid4().hex
                create = partial(mlflow.start_run, experiment_id=experiment_id, run_name=run_name,
                                 tags={**tags, RUN_TOKEN_TAG: token}, log_system_metrics=system_metrics)
                run = _retry(once(create, partial(_created, experiment_id, token, system_metrics)),
                             retry_s, "starting the run")
            run_id = run.info.run_id
        if not resume_run_id:
            # Outside the deferral: the id is known, so Ctrl-C during a long wait ends the run KILLED.
            _retry(lambda: mlflow.log_params(flatten(params)), retry_s, f"logging the params of run {run_id}")
        yield run_id
    except BaseException as e:
        if run_id is not None:  # else no run was created: nothing to end
            _end_after(run_id, e, retry_s)
        raise
    else:
        _end(run_id, "FINISHED", retry_s)


def _created(experiment_id: str, token: str, system_metrics: bool | None):
    """The run an earlier attempt created (tagged ``token``), reopened; else None."""
    runs = MlflowClient().search_runs([experiment_id], f"tags.{RUN_TOKEN_TAG} = '{token}'", max_results=1)
    return mlflow.start_run(run_id=runs[0].info.run_id, log_system_metrics=system_metrics) if runs else None


def _retry(fn, retry_s: float, what: str):
    return retry_until(fn, time.monotonic() + retry_s,
                       f"{what}: the tracking server {mlflow.get_tracking_uri()} did not answer for "
                       f"{retry_s:g} s (params.yaml: mlflow.retry_s)")


def _end_after(run_id: str, e: BaseException, retry_s: float) -> None:
    if isinstance(e, KeyboardInterrupt | SystemExit):  # Ctrl-C, or SIGTERM via the CLI's handler
        _end(run_id, "KILLED", retry_s)
        return
    if isinstance(e, TrackingUnavailable):
        print(f"runyard: {e}; marking run {run_id} FAILED once the tracking server answers "
              f"(up to {retry_s:g} s)", file=sys.stderr, flush=True)
    _end(run_id, "FAILED", retry_s, cause=e)


def _end(run_id: str, status: str, retry_s: float, cause: BaseException | None = None) -> None:
    """End the active run, retrying a server that is down; one line if it never answers."""
    client = MlflowClient()
    try:
        retry_until(lambda: client.set_terminated(run_id, status), time.monotonic() + retry_s, "")
    except TrackingUnavailable:
        because = f"{cause}; " if isinstance(cause, TrackingUnavailable) else ""
        raise TrackingUnavailable(
            f"{because}run {run_id} could not be marked {status}: the tracking server "
            f"{mlflow.get_tracking_uri()} did not answer for {retry_s:g} s "
            "(params.yaml: mlflow.retry_s); it shows RUNNING until `runyard train --resume`"
        ) from cause
    finally:
        # mlflow.end_run drops the run from the fluent API's stack before its request, so
        # it cannot be the call retried; here it only closes that stack (status already set).
        with contextlib.suppress(Exception), quick_requests():
            mlflow.end_run(status)
