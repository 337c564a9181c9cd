"""`runyard serve MODEL@ALIAS`: a registered model over HTTP that follows its alias.

It speaks MLflow's pyfunc scoring protocol (what `mlflow models serve` speaks), built
from MLflow's own scoring server: its input parsing, schema enforcement and
prediction encoding. The endpoints are:

- ``GET /ping`` and ``GET /health``;
- ``POST /invocations`` with ``{"inputs": ...}``, ``dataframe_split``,
  ``dataframe_records`` or ``instances``, answered with ``{"predictions": ...}``;
- ``GET /version``: which model version answers. Every ``/invocations`` answer also
  carries it in the ``X-Runyard-Model-Version`` header.

A bad payload gets a 4xx and a JSON ``{"error_code", "message"}`` of one line.

A background thread resolves the alias every ``poll_s`` seconds. When it points to
another version, that version is loaded next to the current one, then swapped in by
one assignment. A request reads the served model once, so requests in flight finish
on the model they started with. If the registry cannot be read, the current model
stays served and one warning is logged (and one line when it can be read again).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from runyard.errors import RunyardError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.pyfunc import PyFuncModel

    from runyard.config import Project

log = logging.getLogger("runyard.serve")



@dataclass(frozen=True)
class Target:
    name: str
    alias: str

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}"


def parse_target(spec: str) -> Target:
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


def _reason(e: BaseException) -> str:
    """An exception as one short line."""
    text = " ".join(str(getattr(e, "message", None) or e).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Watcher:
    """Keeps loaded the version that ``target`` points to, swapping when the alias moves."""

    def __init__(self, client: MlflowClient, target: Target, served: Served):
        self.client = client
        self.target = target
        self.served = served
        self._registry_ok = True
        self._failed_version: str | None = None

    def poll(self) -> bool:
        """One look at the registry; True if another version is now served."""
        try:
            mv = self.client.get_model_version_by_alias(self.target.name, self.target.alias)
        except Exception as e:  # unreachable, locked, alias deleted: keep what we serve
            if self._registry_ok:
                log.warning(f"cannot resolve {self.target} ({_reason(e)}); still serving v{self.served.version}")
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
                log.warning(f"{self.target} moved to v{version} but it does not load ({_reason(e)}); "
                            f"still serving v{self.served.version}")
            self._failed_version = version
            return False
        old, self.served = self.served, new
        log.info(f"reloaded {self.target}: v{old.version} -> v{new.version} "
                 f"(run {new.run_id}, loaded in {new.load_s:.1f} s)")
        return True

    def watch(self, every_s: float, stop: threading.Event) -> None:
        while not stop.wait(every_s):
            self.poll()


def load(target: Target, mv: ModelVersion) -> Served:
    import mlflow.pyfunc

    from runyard.tracking import mlflow_pytorch

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
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(target.name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise RunyardError(f"{where}: cannot read the model registry ({_reason(e)})") from None
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


def bind(host: str, port: int) -> socket.socket:
    """Take the port before loading anything, so a busy port fails in a blink."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise RunyardError(f"--host: cannot resolve {host!r} ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise RunyardError(f"--port: {host}:{port} is already in use; pick another port") from None
        raise RunyardError(f"--host/--port: cannot listen on {host}:{port} ({e.strerror})") from None
    return sock


# --------------------------------------------------------------------------- entry point


def _setup_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s runyard serve %(levelname)s %(message)s",
                                               "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def serve(project: Project, spec: str, host: str = "127.0.0.1", port: int = 8080, poll_s: float = 10.0) -> None:
    """Check everything, load the model, then serve it until interrupted."""
    target = parse_target(spec)
    if not 0 <= port <= 65535:
        raise RunyardError(f"--port: {port} is not a port; allowed: 1-65535 (0: any free port)")
    if not poll_s > 0:
        raise RunyardError(f"--poll-s: must be > 0 (got {poll_s:g})")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from runyard.stages import tracking_uri
    from runyard.tracking.runs import use_tracking

    uri = tracking_uri(project)
    client = use_tracking(uri)
    where = f"{project.rel(project.params_file)}: mlflow.tracking_uri"
    mv = resolve(client, target, where)
    sock = bind(host, port)
    stop = threading.Event()
    try:
        try:
            served = load(target, mv)
        except Exception as e:
            raise RunyardError(f"MODEL@ALIAS: {target}: v{mv.version} does not load ({_reason(e)})") from None
        import uvicorn

        from runyard.serving.app import build_app

        watcher = Watcher(client, target, served)
        app = build_app(watcher)
        _setup_logging()
        threading.Thread(target=watcher.watch, args=(poll_s, stop), daemon=True, name="runyard-serve-poll").start()
        bound_host, bound_port = sock.getsockname()[:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        log.info(f"serving {target} v{served.version} (run {served.run_id}) on http://{url_host}:{bound_port}; "
                 f"checking the alias every {poll_s:g} s")
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=10)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            log.info(f"stopped serving {target} v{watcher.served.version}")
    finally:
        stop.set()
        sock.close()


def serve_until_stopped(project: Project, spec: str, host: str, port: int, poll_s: float) -> NoReturn:
    """`runyard serve`: serve until SIGTERM or Ctrl-C, then leave at once.

    Once the server has shut down nothing is left to write, and tearing down torch,
    MLflow and pandas module by module took seconds on a busy machine (Kubernetes
    waits 30 s before it kills)."""
    try:
        serve(project, spec, host, port, poll_s)
        code = 0
    except SystemExit as e:  # SIGTERM, re-raised by uvicorn after its graceful shutdown
        code = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
