"""The driver's tracking client: one way every command opens the project's MLflow store
and starts a run of a training, a search or an evaluation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient

from runyard.config import Experiment
from runyard.tracking.lineage import lineage_tags
from runyard.tracking.runs import ensure_experiment, tracked_run, use_tracking
from runyard.tracking.uri import artifact_location, project_tracking_uri


@dataclass
class Tracking:
    """A project's tracking store, checked to answer, with MLflow's fluent API pointed at it."""

    project: Any
    """The ``runyard.project.Project``."""
    uri: str
    client: MlflowClient

    @classmethod
    def of(cls, project) -> Tracking:
        uri = project_tracking_uri(project)
        return cls(project, uri, use_tracking(uri))

    @property
    def retry_s(self) -> float:
        return self.project.params.mlflow.retry_s

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
