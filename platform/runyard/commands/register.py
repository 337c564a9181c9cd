"""`runyard register EXPERIMENT`: a model registry version; the champion alias moves only on improvement."""

from __future__ import annotations

from runyard.models import saved as saved_model
from runyard.project import Project
from runyard.tracking import registry
from runyard.tracking.client import Tracking


def register(project: Project, name: str) -> registry.Registration:
    """Register the trained model; move the champion alias only if it is better."""
    exp = project.experiment(name)
    model_dir = project.model_dir(name)
    record = saved_model.read_record(model_dir, project.rel(model_dir))
    client = Tracking.of(project).client
    return registry.register(
        client, name, record["model_uri"], record["run_id"], exp.optimized_metric,
        exp.optimized_mode, project.params.mlflow.champion_alias,
    )
