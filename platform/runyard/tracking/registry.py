"""Model registry: one registered model per experiment, alias moved only on improvement.

``register`` is idempotent, so a registration cut short (the tracking server went down
between creating the version and moving the alias) is finished by running it again:
the run's existing version is reused, never a second one created."""

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
        try:
            client.create_registered_model(name, description=f"runyard experiment {name}")
        except MlflowException as e:
            # Created meanwhile: by a parallel stage, or by our own attempt whose answer was lost.
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    query = f"name='{name}' and run_id='{run_id}'"
    versions = client.search_model_versions(query)
    if not versions:
        # A logged model (models:/m-...) is named by its id too: a tracking server refuses the
        # version otherwise ("the model_id request parameter must identify ..."); sqlite does not check.
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        client.create_model_version(name, model_uri, run_id, model_id=model_id)
        versions = client.search_model_versions(query)
    # Oldest first: a retried create whose first answer was lost made a second version; drop it.
    versions = sorted(versions, key=lambda v: int(v.version))
    mv = versions[0]
    for extra in versions[1:]:
        client.delete_model_version(name, extra.version)
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
