"""The project's warm local Ray: one head on 127.0.0.1 shared by every stage and command.

``ray.address: null`` used to mean a private Ray per process (`ray.init()`, 5-6 s and
a dashboard's dozen processes in every `dvc repro` stage). Now the first command
starts one `ray start --head` for the project and records it in
``.runyard/local.json``; the next commands connect to it in well under a second.

- Loopback only: the head listens on 127.0.0.1 (every port picked free) with
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, so Ray's guesses stay on loopback too.
- Token auth on, as for `runyard cluster up` (``nodes._ensure_token``): the head runs
  anyone's code who can reach its GCS; clients send the token (RAY_AUTH_MODE=token).
- No dashboard: a local run needs the GCS, the raylet, the object store and the
  runtime-env agent (the user's code ships as ``py_modules``); the dashboard only serves
  the web UI, the Jobs API and the state API, which runyard uses on clusters
  (`runyard submit`, `runyard cluster`), never on this head. It is one process and
  about 2 s of start-up fewer.
- Stopped after ``ray.local_idle_s`` without a runyard command connected (a watchdog
  process started beside the head), and by `runyard local down`.
- ``ray.local_idle_s: 0`` keeps the old behaviour: a private Ray per process.

Every command that connects registers its pid in ``.runyard/local-clients/``; the
watchdog counts a head busy while one of those processes lives. Like `runyard cluster down`,
stopping never runs `ray stop` (which kills every Ray of the user on the machine):
it stops exactly the head's session and the processes naming its temp dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from runyard.errors import RunyardError, summary_line
from runyard.execution import nodes

STATE_FILE = "local.json"
LOCK_FILE = "local.lock"
CLIENTS_DIR = "local-clients"
HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
WATCH_EVERY_S = 2.0
HEAD_PORTS = ("port", "dashboard_port", "ray_client_server_port")
NODE_PORTS = (
    "node_manager_port", "object_manager_port", "dashboard_agent_listen_port",
    "dashboard_agent_grpc_port", "runtime_env_agent_port", "metrics_export_port",
)


def state_dir_for(start: Path | None = None) -> Path:
    """The ``.runyard/`` of the project around ``start`` (the working directory), else of ``start`` itself."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "params.yaml").is_file() and (d / "pipelines").is_dir():
            return d / ".runyard"
    return here / ".runyard"


def read_state(state_dir: Path) -> dict | None:
    path = Path(state_dir) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_state(state_dir: Path, state: dict) -> None:
    path = Path(state_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One process at a time decides whether to start (or stop) the head."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(state_dir) / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _answers(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


def processes(state: dict) -> list:
    """The head's live processes (its session and those naming its temp dir), the watchdog included."""
    return nodes._processes(state)


def is_up(state: dict | None) -> bool:
    """Whether the recorded head runs, answers, and is this installation's Ray."""
    import ray

    if not state or state.get("ray_version") != ray.__version__ or state.get("python") != sys.executable:
        return False
    return _answers(state["gcs_address"]) and any("gcs_server" in " ".join(p.info.get("cmdline") or ())
                                                  for p in processes(state))


def ensure(state_dir: Path, idle_s: float, cpus: float, gpus: float) -> str:
    """The GCS address of the project's local head: the running one, else a fresh one."""
    state_dir = Path(state_dir).resolve()
    with _locked(state_dir):
        state = read_state(state_dir)
        if is_up(state):
            if state.get("idle_s") != idle_s:  # the latest params.yaml decides
                _write_state(state_dir, {**state, "idle_s": idle_s})
            return state["gcs_address"]
        if state:  # a head that died or was killed (or another Ray version's): clear what is left
            _stop(state_dir, state)
        for attempt in range(STARTUP_RETRIES + 1):
            try:
                return _start(state_dir, idle_s, cpus, gpus)["gcs_address"]
            except _TimedOut as e:
                if attempt == STARTUP_RETRIES:
                    raise RunyardError(f"local Ray: the head timed out during start-up {attempt + 1} times "
                                       f"(the machine is too busy?); log: {e}") from None
                print("runyard: local Ray timed out during start-up (a busy machine?); trying again",
                      file=sys.stderr, flush=True)
        raise AssertionError("unreachable")


STARTUP_RETRIES = 2
"""Extra tries of a head whose `ray start` timed out: Ray waits a fixed 30 s for its raylet to
register, which a busy machine can miss (as ``cluster.STARTUP_RETRIES``)."""


class _TimedOut(Exception):
    pass


def _start(state_dir: Path, idle_s: float, cpus: float, gpus: float) -> dict:
    import ray

    ray_bin = nodes.ray_binary()
    env = nodes._node_env(head=True)
    nodes._ensure_token(ray_bin, env)
    # A short path: Ray's unix sockets live below it and are limited to 107 bytes.
    temp_root = Path(tempfile.mkdtemp(prefix="runyard-local-"))
    # The dashboard's port too: Ray checks it even with the dashboard off, and 8265 may be taken.
    ports = dict(zip(HEAD_PORTS + NODE_PORTS,
                     nodes.free_ports(len(HEAD_PORTS) + len(NODE_PORTS), HOST), strict=True))
    args = [
        "--head", f"--node-ip-address={HOST}", "--include-dashboard=false",
        f"--temp-dir={temp_root}", f"--num-cpus={int(cpus)}", f"--num-gpus={int(gpus)}",
        "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats",
        *(f"--{name.replace('_', '-')}={port}" for name, port in ports.items()),
    ]
    log = temp_root / "ray-start.log"
    with open(log, "w") as out:
        # Its own session: Ctrl-C in a terminal, or a stage's end, does not reach the head.
        proc = subprocess.Popen([ray_bin, "start", *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=state_dir.parent, start_new_session=True)
    state = {
        "gcs_address": f"{HOST}:{ports['port']}", "temp_root": str(temp_root), "idle_s": idle_s,
        "ray_version": ray.__version__, "python": sys.executable,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "nodes": [{"index": 0, "head": True, "session": proc.pid, "temp_dir": str(temp_root), "log": str(log)}],
    }
    _write_state(state_dir, state)  # before waiting: a failed start is still stopped by `local down`
    try:
        code = proc.wait(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = None
    if code != 0 or not _answers(state["gcs_address"]):
        _stop(state_dir, state, keep_logs=True)
        if "timed out during startup" in log.read_text(errors="replace"):
            raise _TimedOut(str(log))
        raise RunyardError(f"local Ray: the head did not start: {summary_line(log.read_text(errors='replace'))} "
                           f"(log: {log})")
    watch_log = temp_root / "watchdog.log"
    with open(watch_log, "w") as out:
        watchdog = subprocess.Popen(
            # The temp dir with a slash in its command line: `_stop` finds the watchdog like the head's processes.
            [sys.executable, "-m", "runyard.execution.local_ray", str(state_dir), f"{temp_root}/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=state_dir.parent)
    state["watchdog"] = watchdog.pid
    _write_state(state_dir, state)
    return state


def down(state_dir: Path) -> int | None:
    """Stop the project's local head and its watchdog; how many processes were stopped, None if none was up."""
    state_dir = Path(state_dir).resolve()
    with _locked(state_dir):
        state = read_state(state_dir)
        if state is None:
            return None
        return _stop(state_dir, state)


def _stop(state_dir: Path, state: dict, keep_logs: bool = False) -> int:
    import shutil

    procs = processes(state)  # never this process: the watchdog stopping its own head
    nodes._terminate(procs, grace_s=3.0)
    if not keep_logs:
        shutil.rmtree(state["temp_root"], ignore_errors=True)
    current = read_state(state_dir)
    if current and current.get("temp_root") == state["temp_root"]:
        (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
    return len(procs)


def describe(state_dir: Path) -> str:
    """One line on the project's local Ray, for `runyard local status`."""
    state = read_state(Path(state_dir).resolve())
    if state is None:
        return "local Ray: not up (the next command that needs Ray starts it)"
    procs = processes(state)
    if not procs:
        return "local Ray: recorded but not running (the next command starts a fresh one)"
    clients = live_clients(Path(state_dir))
    return (f"local Ray: up at {state['gcs_address']} since {state['started_at']}, {len(procs)} processes, "
            f"{len(clients)} command(s) using it, stops after {state['idle_s']:g} s idle")


# --------------------------------------------------------------------------- clients


def register_client(state_dir: Path) -> None:
    """Count this process as a user of the head until it exits (the watchdog checks its pid)."""
    import atexit

    d = Path(state_dir) / CLIENTS_DIR
    d.mkdir(parents=True, exist_ok=True)
    mine = d / str(os.getpid())
    mine.write_text(str(_create_time(os.getpid())))
    atexit.register(lambda: mine.unlink(missing_ok=True))


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def live_clients(state_dir: Path) -> list[int]:
    """The registered processes still running; the files of those gone are removed."""
    d = Path(state_dir) / CLIENTS_DIR
    alive = []
    for f in d.glob("*") if d.is_dir() else ():
        with contextlib.suppress(OSError, ValueError):
            pid, started = int(f.name), float(f.read_text() or 0)
            created = _create_time(pid)
            if created is not None and abs(created - started) < 1.0:
                alive.append(pid)
            else:
                f.unlink(missing_ok=True)
    return alive


def watch(state_dir: Path, temp_root: str) -> None:
    """The watchdog: stop the head after ``idle_s`` with no client; end when the head is gone."""
    state_dir = Path(state_dir)
    last_busy = time.monotonic()
    while True:
        time.sleep(WATCH_EVERY_S)
        state = read_state(state_dir)
        if not state or state.get("temp_root") != temp_root.rstrip("/"):
            return  # stopped (`runyard local down`) or replaced
        if not any("gcs_server" in " ".join(p.info.get("cmdline") or ()) for p in processes(state)):
            with _locked(state_dir):
                _stop(state_dir, state)  # killed: clear what is left, so the next command starts afresh
            return
        if live_clients(state_dir):
            last_busy = time.monotonic()
        elif time.monotonic() - last_busy > float(state.get("idle_s") or 0):
            with _locked(state_dir):
                if not live_clients(state_dir):
                    print(f"runyard: local Ray idle for {state['idle_s']:g} s: stopping it", flush=True)
                    _stop(state_dir, state)
                    return
            last_busy = time.monotonic()


if __name__ == "__main__":
    watch(Path(sys.argv[1]), sys.argv[2])
