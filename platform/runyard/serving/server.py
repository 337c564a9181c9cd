"""`runyard serve MODEL@ALIAS`: a registered model over HTTP that follows its alias.

It speaks MLflow's pyfunc scoring protocol (what `mlflow models serve` speaks), built
from MLflow's own scoring server: its input parsing, schema enforcement and
prediction encoding. The endpoints are:

- ``GET /ping`` and ``GET /health``;
- ``POST /invocations`` with ``{"inputs": ...}``, ``dataframe_split``,
  ``dataframe_records`` or ``instances``, answered with ``{"predictions": ...}``;
- ``GET /version``: which model version answers. Every ``/invocations`` answer also
  carries it in the ``X-Runyard-Model-Version`` header.

A bad payload gets a 4xx and a JSON ``{"error_code", "message"}`` of one line; so does
a request over the limits (``app.Limits``: a 413 for a body or a batch too big, a 503
for a prediction that took too long).

This module checks the arguments, takes the port and runs the server; the model and
its alias are ``model``'s, the HTTP side is ``app``'s.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import threading
from typing import TYPE_CHECKING, NoReturn

import uvicorn

from runyard.errors import RunyardError
from runyard.serving.app import MAX_BODY_MB, MAX_ROWS, MB, TIMEOUT_S, Limits, build_app
from runyard.serving.model import Watcher, load, parse_target, reason, resolve
from runyard.tracking.runs import use_tracking
from runyard.tracking.uri import project_tracking_uri

if TYPE_CHECKING:
    from runyard.project import Project

log = logging.getLogger("runyard.serve")


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


def serve(project: Project, spec: str, host: str = "127.0.0.1", port: int = 8080, poll_s: float = 10.0,
          max_body_mb: float = MAX_BODY_MB, max_rows: int = MAX_ROWS, timeout_s: float = TIMEOUT_S) -> None:
    """Check everything, load the model, then serve it until interrupted.

    ``max_body_mb`` (MB of 2**20 bytes), ``max_rows`` and ``timeout_s`` bound what one
    request may cost (``app.Limits``)."""
    target = parse_target(spec)
    if not 0 <= port <= 65535:
        raise RunyardError(f"--port: {port} is not a port; allowed: 1-65535 (0: any free port)")
    for option, value in (("--poll-s", poll_s), ("--max-body-mb", max_body_mb), ("--timeout-s", timeout_s)):
        if not value > 0:
            raise RunyardError(f"{option}: must be > 0 (got {value:g})")
    if max_rows < 1:
        raise RunyardError(f"--max-rows: must be >= 1 (got {max_rows})")
    limits = Limits(max_body_bytes=max(1, int(max_body_mb * MB)), max_rows=max_rows, timeout_s=timeout_s)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = use_tracking(project_tracking_uri(project))
    where = f"{project.rel(project.params_file)}: mlflow.tracking_uri"
    mv = resolve(client, target, where)
    sock = bind(host, port)
    stop = threading.Event()
    try:
        try:
            served = load(target, mv)
        except Exception as e:
            raise RunyardError(f"MODEL@ALIAS: {target}: v{mv.version} does not load ({reason(e)})") from None
        watcher = Watcher(client, target, served)
        app = build_app(watcher, limits)
        _setup_logging()
        threading.Thread(target=watcher.watch, args=(poll_s, stop), daemon=True, name="runyard-serve-poll").start()
        bound_host, bound_port = sock.getsockname()[:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        log.info(f"serving {target} v{served.version} (run {served.run_id}) on http://{url_host}:{bound_port}; "
                 f"checking the alias every {poll_s:g} s; per request at most {max_body_mb:g} MB, "
                 f"{max_rows:,} rows and {timeout_s:g} s")
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=10)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            log.info(f"stopped serving {target} v{watcher.served.version}")
    finally:
        stop.set()
        sock.close()


def serve_until_stopped(project: Project, spec: str, host: str, port: int, poll_s: float,
                        max_body_mb: float = MAX_BODY_MB, max_rows: int = MAX_ROWS,
                        timeout_s: float = TIMEOUT_S) -> NoReturn:
    """`runyard serve`: serve until SIGTERM or Ctrl-C, then leave at once.

    Once the server has shut down nothing is left to write, and tearing down torch,
    MLflow and pandas module by module took seconds on a busy machine (Kubernetes
    waits 30 s before it kills)."""
    try:
        serve(project, spec, host, port, poll_s, max_body_mb=max_body_mb, max_rows=max_rows, timeout_s=timeout_s)
        code = 0
    except SystemExit as e:  # SIGTERM, re-raised by uvicorn after its graceful shutdown
        code = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
