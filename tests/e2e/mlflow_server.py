"""A real `mlflow server` for end-to-end tests: start it, wait until it answers, stop it.

The server is the process group of its own session, so ``stop`` ends the CLI and
every worker it forked (uvicorn or gunicorn), and a restart on the same port finds
it free.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(port: int, backend_uri: str, artifacts_dir: Path, log: Path | None = None) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:``port`` with one worker; output to ``log`` (appended)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (the child holds it)
    mlflow = Path(sys.executable).with_name("mlflow")
    try:
        return subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", backend_uri,
             "--default-artifact-root", Path(artifacts_dir).resolve().as_uri(),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            # No job runner (GenAI judges: seven queue consumers): a faster start and restart.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
    finally:
        if log:
            out.close()


def wait_ready(url: str, deadline: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url``/health until it answers 200; ``deadline`` is a time.monotonic() value."""
    while True:
        try:
            if requests.get(url.rstrip("/") + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode} before answering")
        if time.monotonic() > deadline:
            raise TimeoutError(f"mlflow server at {url} did not answer in time")
        time.sleep(0.2)


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Stop the server and all its workers (``sig``: SIGKILL for an outage, SIGTERM to be nice)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # uvicorn waiting on its workers: no more patience
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def wait_port_free(port: int, deadline: float) -> None:
    """Until nothing listens on 127.0.0.1:``port`` (a killed worker may linger a moment)."""
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} still in use")
        time.sleep(0.1)
