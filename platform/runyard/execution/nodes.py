"""Starting and stopping Ray nodes on this machine, as `runyard cluster` and the
project's warm local Ray (``execution.local_ray``) both do.

Each node's `ray start` runs as the leader of a session of its own with a private
``--temp-dir``: stopping a node stops exactly the processes of that session or naming
that directory, never `ray stop` (which kills every Ray process of the user).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from runyard.errors import RunyardError, summary_line
from runyard.execution.ray_auth import auth_token


def ray_binary() -> str:
    """The `ray` next to this Python (the same Ray as the client), else the one on PATH."""
    here = Path(sys.executable).parent / "ray"
    found = str(here) if here.is_file() else shutil.which("ray")
    if not found:
        raise RunyardError("cluster: the `ray` command is not installed (pip install 'ray[default]')")
    return found


def _processes(state: dict, nodes: list[dict] | None = None) -> list:
    """Live processes of this cluster (or of some of its nodes).

    Each node's `ray start` ran as the leader of a new session, and the node's
    daemons and workers stay in it (some rename themselves, e.g. ray::DashboardAgent,
    so their command lines do not say whose they are). A process whose command line
    names the cluster's private temp dir is ours too.
    """
    import psutil

    nodes = state["nodes"] if nodes is None else nodes
    sessions = {n["session"] for n in nodes if n.get("session")}
    markers = [n["temp_dir"].rstrip("/") + "/" for n in nodes]
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            args = proc.info["cmdline"] or ()
            in_session = os.getsid(proc.pid) in sessions and any("ray" in a for a in args)
            if in_session or any(m in a or a.endswith("=" + m[:-1]) for m in markers for a in args):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def free_ports(n: int, host: str) -> list[int]:
    """n distinct free ports on ``host`` (held together while choosing, so no duplicates)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_env(head: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(
        RAY_AUTH_MODE="token",
        # 0 keeps Ray's guesses of "this machine's address" on loopback, but also
        # forbids `ray start --address` (joining a cluster): workers need 1. Their
        # explicit loopback --node-ip-address (see node_ip) keeps them on loopback.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0" if head else "1",
        RAY_USAGE_STATS_ENABLED="0",
        # Job entrypoints inherit the node's environment: `python`, `runyard` and
        # `dvc` must be this installation's.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def _ensure_token(ray: str, env: dict[str, str]) -> None:
    """`ray start` with RAY_AUTH_MODE=token refuses to start without a token: make one once."""
    if auth_token():
        return
    done = subprocess.run([ray, "get-auth-token", "--generate"], env=env, capture_output=True, text=True)
    if done.returncode != 0 or not auth_token():
        raise RunyardError(f"cluster up: could not create a Ray auth token: {summary_line(done.stderr)}")


def _terminate(procs: list, grace_s: float = 5.0) -> None:
    """SIGTERM in Ray's own order (raylets, then the rest, then the GCS), SIGKILL after a grace period."""
    import psutil

    def name(p) -> str:
        with contextlib.suppress(psutil.Error):
            return " ".join(p.info.get("cmdline") or p.cmdline())
        return ""

    buckets = [[p for p in procs if "raylet/raylet" in name(p)],
               [p for p in procs if "raylet/raylet" not in name(p) and "gcs_server" not in name(p)],
               [p for p in procs if "gcs_server" in name(p)]]
    for bucket in buckets:
        for p in bucket:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGTERM)
        left = _wait_gone(bucket, grace_s)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        _wait_gone(left, 5.0)


def _wait_gone(procs: list, timeout_s: float) -> list:
    """Poll until the processes are gone (a zombie counts as gone); return those still alive."""
    import psutil

    def alive(p) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.monotonic() + timeout_s
    left = [p for p in procs if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    return left
