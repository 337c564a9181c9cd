"""The model `runyard serve` answers with: finding it in the registry, loading it, and
following its alias.

A background thread (``Watcher.watch``) resolves the alias every ``poll_s`` seconds.
When it points to another version, that version is loaded next to the current one,
then swapped in by one assignment. A request reads ``Watcher.served`` once, so requests
in flight finish on the model they started with. If the registry cannot be read (the tracking
server is down: each poll is one quick attempt), the current model stays served and one
warning is logged (and one line when it can be read again).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import mlflow.pyfunc
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel

from runyard.errors import RunyardError
from runyard.tracking import mlflow_pytorch
from runyard.tracking.outage import try_once

log = logging.getLogger("runyard.serve")


@dataclass(frozen=True)
class Target:
    name: str
    alias: str

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}"


def parse_target(spec: str) -> Target:
    """``MODEL@ALIAS`` as a Target, or one line saying what was expected."""
    name, at, alias = spec.partition("@")
    if not (name and at and alias) or "@" in alias or any(c.isspace() for c in spec):
        raise RunyardError(
            f"MODEL@ALIAS: {spec!r} is not a registered model and an alias; expected e.g. mnist1d_cnn@champion"
        )
    return Target(name, alias)


@dataclass(frozen=True)
class Served:
    """One loaded model version: what a request reads, once, to get its answer."""

    version: str
    run_id: str
    model: PyFuncModel
    input_schema: Any
    load_s: float


def reason(e: BaseException) -> str:
    """An exception as one short line."""
    text = " ".join(str(getattr(e, "message", None) or e).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Watcher:
    """Keeps loaded the version that ``target`` points to, swapping when the alias moves."""

    def __init__(self, client, target: Target, served: Served):
        """``client``: an ``MlflowClient`` or the driver's ``RetryingClient``; polling makes
        one quick attempt each time either way (the next poll is the retry)."""
        self.client = client
        self.target = target
        self.served = served
        self._registry_ok = True
        self._failed_version: str | None = None

    def poll(self) -> bool:
        """One look at the registry; True if another version is now served."""
        # One quick attempt, not MLflow's minutes of backoff nor the retrying client's
        # mlflow.retry_s: a server that is back is seen at the next poll.
        raw = getattr(self.client, "raw", self.client)
        try:
            ok, mv = try_once(lambda: raw.get_model_version_by_alias(self.target.name, self.target.alias))
            if not ok:
                raise ConnectionError(f"the tracking server {raw.tracking_uri} does not answer")
        except Exception as e:  # unreachable, locked, alias deleted: keep what we serve
            if self._registry_ok:
                log.warning(f"cannot resolve {self.target} ({reason(e)}); still serving v{self.served.version}")
            self._registry_ok = False
            return False
        if not self._registry_ok:
            log.info(f"{self.target} resolves again: v{mv.version}")
            self._registry_ok = True
        version = str(mv.version)
        if version == self.served.version:
            return False
        try:
            new = load(self.target, mv)
        except Exception as e:
            if version != self._failed_version:  # warn once per version, keep retrying
                log.warning(f"{self.target} moved to v{version} but it does not load ({reason(e)}); "
                            f"still serving v{self.served.version}")
            self._failed_version = version
            return False
        old, self.served = self.served, new
        log.info(f"reloaded {self.target}: v{old.version} -> v{new.version} "
                 f"(run {new.run_id}, loaded in {new.load_s:.1f} s)")
        return True

    def watch(self, every_s: float, stop: threading.Event) -> None:
        """Poll every ``every_s`` seconds until ``stop`` is set."""
        while not stop.wait(every_s):
            self.poll()


def load(target: Target, mv: ModelVersion) -> Served:
    """Load version ``mv`` of ``target``'s model."""
    start = time.monotonic()
    mlflow_pytorch()  # a torch model's loader, without a second copy of Lightning
    path = list(sys.path)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{target.name}/{mv.version}")
    finally:
        # Loading puts the model's code_paths first on sys.path; one more per reload adds up.
        sys.path[:] = path
    return Served(str(mv.version), mv.run_id, model, model.metadata.get_input_schema(),
                  time.monotonic() - start)


def resolve(client: MlflowClient, target: Target, where: str) -> ModelVersion:
    """The version ``target`` points to now, or one line saying what is registered."""
    try:
        registered = client.get_registered_model(target.name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise RunyardError(f"{where}: cannot read the model registry ({reason(e)})") from None
        names = sorted(m.name for m in client.search_registered_models())
        known = ", ".join(names) if names else "none yet (run `runyard register <experiment>`)"
        raise RunyardError(f"MODEL@ALIAS: {target}: no registered model {target.name!r}; registered: {known}") from None
    try:
        return client.get_model_version_by_alias(target.name, target.alias)
    except MlflowException:
        aliases = ", ".join(f"{a} (v{v})" for a, v in sorted(registered.aliases.items())) or "none"
        raise RunyardError(
            f"MODEL@ALIAS: {target}: model {target.name!r} has no alias {target.alias!r}; its aliases: {aliases}"
        ) from None
