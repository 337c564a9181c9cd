"""The driver's tracking client: one way every command opens the project's MLflow store
and starts a run of a training, a search or an evaluation.

Every call through ``Tracking.client`` (a ``RetryingClient``) and every fluent call made
through ``Tracking.retry`` rides out a tracking server outage for ``mlflow.retry_s``
(see ``runyard.tracking.outage``), then fails in one line.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from mlflow import MlflowClient

from runyard.config import Experiment
from runyard.tracking.lineage import lineage_tags
from runyard.tracking.outage import ATTEMPT_TIMEOUT_S, retry_until
from runyard.tracking.runs import ensure_experiment, tracked_run, use_tracking
from runyard.tracking.uri import artifact_location, project_tracking_uri

T = TypeVar("T")

UPLOAD_TIMEOUT_S = 120
"""One attempt of a call that uploads files (a model, plots): longer than a metadata call's."""


def unavailable(what: str, uri: str, retry_s: float) -> str:
    """The one line saying the server did not come back in time."""
    return (f"{what}: the tracking server {uri} did not answer for {retry_s:g} s "
            "(params.yaml: mlflow.retry_s)")


def retrying(fn: Callable[[], T], uri: str, retry_s: float, what: str, timeout_s: float = ATTEMPT_TIMEOUT_S) -> T:
    """``fn()``, retried through an outage until ``retry_s`` after this call; then
    TrackingUnavailable in one line. Errors that are not an outage raise at once."""
    return retry_until(fn, time.monotonic() + retry_s, unavailable(what, uri, retry_s), timeout_s)


class RetryingClient:
    """An ``MlflowClient`` whose every public method is retried through an outage.

    Attributes that are not methods (``tracking_uri``) are the client's own; ``raw`` is
    the client itself, for a caller that retries in its own way (serve's alias polling)."""

    UPLOADS = frozenset({"log_artifact", "log_artifacts", "log_image", "log_figure", "log_text", "log_dict",
                         "log_table", "download_artifacts", "create_model_version"})

    def __init__(self, client: MlflowClient, retry_s: float):
        self.raw, self.retry_s = client, retry_s

    def retry(self, fn: Callable[[], T], what: str, upload: bool = False) -> T:
        """Any call to the same server (a fluent one: ``mlflow.log_input``, a flavour's
        ``log_model``) retried like the client's own; ``upload``: each attempt may take longer."""
        return retrying(fn, self.raw.tracking_uri, self.retry_s, what,
                        UPLOAD_TIMEOUT_S if upload else ATTEMPT_TIMEOUT_S)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "raw":
            # Unpickling (Tune saves its callbacks with the search's state) looks attributes
            # up before __init__ has set raw: without this, each lookup recurses.
            raise AttributeError(name)
        attr = getattr(self.raw, name)
        if name.startswith("_") or not callable(attr):
            return attr
        timeout_s = UPLOAD_TIMEOUT_S if name in self.UPLOADS else ATTEMPT_TIMEOUT_S

        @functools.wraps(attr)
        def call(*args, **kwargs):
            return retrying(lambda: attr(*args, **kwargs), self.raw.tracking_uri, self.retry_s, name, timeout_s)

        return call


@dataclass
class Tracking:
    """A project's tracking store, checked to answer, with MLflow's fluent API pointed at it."""

    project: Any
    """The ``runyard.project.Project``."""
    uri: str
    client: RetryingClient
    """Every call retried through an outage of the tracking server (``mlflow.retry_s``)."""

    @classmethod
    def of(cls, project) -> Tracking:
        uri = project_tracking_uri(project)
        return cls(project, uri, RetryingClient(use_tracking(uri), project.params.mlflow.retry_s))

    @property
    def retry_s(self) -> float:
        return self.project.params.mlflow.retry_s

    def retry(self, fn: Callable[[], T], what: str, upload: bool = False) -> T:
        """A fluent MLflow call (``mlflow.log_input``, a flavour's ``log_model``) retried like
        the client's; ``upload``: it sends files, so each attempt may take longer."""
        return self.client.retry(fn, what, upload)

    @property
    def system_metrics(self) -> bool | None:
        """MLflow's system metrics on the embedded store. On a tracking server MLflow's monitor
        thread retries a request for minutes during an outage and the run's end waits for
        it, past ``mlflow.retry_s``: there MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true opts in."""
        return True if not self.uri.startswith(("http://", "https://")) else None

    def experiment_id(self, exp: Experiment) -> str:
        """The MLflow experiment of ``exp`` (created on first use, with its description)."""
        project = self.project
        location = artifact_location(project.params.mlflow.artifact_root, project.root, exp.name)
        return ensure_experiment(self.client, exp.name, location, exp.description)

    @contextmanager
    def run(self, exp: Experiment, run_name: str, params: dict[str, Any], ray_address: str,
            tags: dict[str, str] | None = None, resume_run_id: str | None = None) -> Iterator[str]:
        """A run of ``exp`` with its params and lineage tags, always ended (see ``tracked_run``)."""
        all_tags = {**lineage_tags(self.project.root, exp.dataset, exp.digest(), ray_address), **(tags or {})}
        with tracked_run(self.experiment_id(exp), run_name, params, all_tags, resume_run_id=resume_run_id,
                         retry_s=self.retry_s, system_metrics=self.system_metrics) as run_id:
            yield run_id
