"""Model registry: one registered model per experiment, alias moved only on improvement."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from runyard.errors import RunyardError


@dataclass
class Registration:
    name: str
    version: str
    metric: str
    value: float
    champion_version: str
    promoted: bool

    def as_dict(self) -> dict:
        return asdict(self)


def beats(value: float, incumbent: float, mode: str) -> bool:
    return value > incumbent if mode == "max" else value < incumbent


def register(
    client: MlflowClient, name: str, model_uri: str, run_id: str, metric: str, mode: str,
    alias: str,
) -> Registration:
    """Register the run's model (once per run) and move ``alias`` if it is better."""
    value = client.get_run(run_id).data.metrics.get(metric)
    if value is None:
        raise RunyardError(f"run {run_id}: has no metric {metric!r} (optimized_metric); nothing registered")
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"runyard experiment {name}")
    versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    # A logged model (models:/m-...) is named by its id too: a tracking server refuses the
    # version otherwise ("the model_id request parameter must identify ..."); sqlite does not check.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    mv = versions[0] if versions else client.create_model_version(name, model_uri, run_id, model_id=model_id)
    client.set_model_version_tag(name, mv.version, metric, str(value))

    try:
        champion = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        champion = None
    incumbent = None if champion is None else client.get_run(champion.run_id).data.metrics.get(metric)
    # A champion without this metric (optimized_metric changed) cannot be compared: replace it.
    promoted = champion is None or (
        champion.version != mv.version and (incumbent is None or beats(value, incumbent, mode))
    )
    if promoted:
        client.set_registered_model_alias(name, alias, mv.version)
    return Registration(
        name, str(mv.version), metric, value,
        str(mv.version) if promoted else str(champion.version), promoted,
    )
