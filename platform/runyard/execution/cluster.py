"""A local multi-node Ray cluster on this machine: one head and N-1 workers on loopback.

Each node is its own `ray start` (without --block), so the cluster behaves like a
real one: separate raylets, object stores and resources, with a ``node_<i>: 1``
custom resource to pin work to node i. Nodes talk over loopback (node i is
127.0.0.(i+2), see ``node_ip``), every port is picked free (other Ray instances on
this machine are left alone), and token authentication is always on: an open Jobs
API runs anyone's code.

What listens where: the dashboard (the Jobs API) and the nodes' HTTP agents listen
on loopback only. Ray 2.60 binds its gRPC servers (GCS, raylets, object managers)
and the Prometheus metrics endpoint on all interfaces whenever a node's address is
not 127.0.0.1, and a worker cannot join as 127.0.0.1 (see ``node_ip``). Those gRPC
servers refuse callers without the token; the metrics endpoint is readable.

The state (addresses, temp dirs, process ids) is written to ``.runyard/cluster.json``
in the project. Each node's `ray start` runs as the leader of a session of its own
and gets its own ``--temp-dir`` under one private directory: ``down()`` stops
exactly the processes in those sessions or naming that directory. It never runs
`ray stop`, which kills every Ray process of the user on the machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.table import Table

from runyard.errors import RunyardError, summary_line
from runyard.execution.nodes import (  # noqa: F401  (names of this module's API)
    _ensure_token,
    _node_env,
    _processes,
    _terminate,
    _wait_gone,
    free_ports,
    ray_binary,
)
from runyard.execution.ray_auth import auth_headers, explicit_address
from runyard.progress import report_console

STATE_FILE = "cluster.json"
HEAD_PORTS = ("port", "dashboard_port", "ray_client_server_port")
NODE_PORTS = (
    "node_manager_port", "object_manager_port", "dashboard_agent_listen_port",
    "dashboard_agent_grpc_port", "runtime_env_agent_port", "metrics_export_port",
)
START_TIMEOUT_S = 120.0


# --------------------------------------------------------------------------- state


def state_file(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def read_state(state_dir: Path) -> dict | None:
    path = state_file(state_dir)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunyardError(f"{path}: unreadable cluster state ({e}); delete it if no cluster is running") from None


def _write_state(state_dir: Path, state: dict) -> None:
    path = state_file(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def dashboard_url(state_dir: Path) -> str | None:
    """The dashboard (Jobs API) URL of the cluster recorded in ``state_dir``, if any."""
    state = read_state(state_dir)
    return state["dashboard_url"] if state else None


def resolve_address(address: str | None, project_root: Path) -> str:
    """--address, else the dashboard of the cluster `runyard cluster up` started here."""
    if address:
        return address
    found = dashboard_url(Path(project_root) / ".runyard")
    if not found:
        raise RunyardError("--address: not given and no runyard cluster is up here; pass --address "
                           "http://HOST:8265 (a Ray dashboard) or start one with `runyard cluster up`")
    return found


def is_up(state: dict) -> bool:
    return bool(_processes(state))


# --------------------------------------------------------------------------- up


def node_ip(index: int) -> str:
    """Node i listens on 127.0.0.(i+2): loopback, one address per node.

    Not 127.0.0.1: a worker can only join with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1,
    and then Ray rewrites "127.0.0.1" and "localhost" (in --address and
    --node-ip-address alike) to the machine's outside address. Other loopback
    addresses are left alone.
    """
    return f"127.0.0.{index + 2}"


def _node_args(index: int, cpus: int, object_store_mb: int, temp_dir: Path, ports: dict[str, int]) -> list[str]:
    return [
        f"--node-ip-address={node_ip(index)}",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={cpus}",
        "--num-gpus=0",
        f"--resources={json.dumps({f'node_{index}': 1})}",
        f"--object-store-memory={object_store_mb * 1024 * 1024}",
        # Random worker ports: the default range is shared by every node on the machine.
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--disable-usage-stats",
        *(f"--{name.replace('_', '-')}={port}" for name, port in ports.items()),
    ]


def _start_node(ray: str, args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        # A session of its own: the node's daemons are not in the caller's process
        # group, so Ctrl-C in a terminal or a test runner's cleanup does not reach them.
        return subprocess.Popen([ray, "start", *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=log.parent, start_new_session=True)


STARTUP_RETRIES = 2
"""Extra tries of a node whose `ray start` timed out: Ray waits a fixed 30 s for a raylet to
register, which a busy machine (a package install beside it) can miss."""


def _wait_started(proc: subprocess.Popen, node: dict, deadline: float) -> bool:
    """Whether the node's `ray start` succeeded; False if it timed out during start-up (worth
    another try); one line naming the node's log for any other failure."""
    try:
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RunyardError(f"cluster up: node {node['index']} did not start in time (log: {node['log']})") from None
    if code == 0:
        return True
    log = Path(node["log"]).read_text(errors="replace")
    if "timed out during startup" in log:
        return False
    raise RunyardError(f"cluster up: node {node['index']} failed to start: {summary_line(log)} (log: {node['log']})")


def _start(ray: str, state: dict, index: int, ports: tuple[int, ...], object_store_mb: int, attempt: int) -> dict:
    """Start node ``index`` (its ``attempt``-th try, fresh ports and directory); record it in ``state``."""
    node_dir = Path(state["temp_root"]) / (f"n{index}" if attempt == 0 else f"n{index}-{attempt}")
    node_dir.mkdir()
    node_ports = dict(zip(NODE_PORTS, free_ports(len(NODE_PORTS), node_ip(index)), strict=True))
    if index == 0:
        node_ports.update(zip(HEAD_PORTS, ports, strict=True))
        role = ["--head", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
    else:
        role = [f"--address={state['gcs_address']}"]
    node = {"index": index, "head": index == 0, "ip": node_ip(index), "resource": f"node_{index}",
            "num_cpus": state["cpus_per_node"],
            "temp_dir": str(node_dir), "log": str(node_dir / "ray-start.log"), "ports": node_ports}
    args = role + _node_args(index, state["cpus_per_node"], object_store_mb, node_dir, node_ports)
    node["popen"] = _start_node(ray, args, _node_env(head=index == 0), Path(node["log"]))
    node["session"] = node["popen"].pid
    state["nodes"] = [n for n in state["nodes"] if n["index"] != index] + [node]
    state["nodes"].sort(key=lambda n: n["index"])
    return node


def _start_until_up(ray: str, state: dict, indices: list[int], ports: tuple[int, ...], object_store_mb: int,
                    deadline: float, state_dir: Path) -> None:
    """Start the nodes ``indices`` together; retry each that timed out during start-up."""
    pending = {i: _start(ray, state, i, ports, object_store_mb, 0) for i in indices}
    _write_state(state_dir, _serialisable(state))
    attempts = dict.fromkeys(indices, 0)
    while pending:
        index, node = next(iter(pending.items()))
        del pending[index]
        if _wait_started(node.pop("popen"), node, deadline):
            continue
        if attempts[index] == STARTUP_RETRIES:
            raise RunyardError(f"cluster up: node {index} timed out during start-up {STARTUP_RETRIES + 1} times "
                               f"(the machine is too busy?); log: {node['log']}")
        print(f"runyard: cluster up: node {index} timed out during start-up (a busy machine?); trying again",
              file=sys.stderr, flush=True)
        _terminate(_processes(state, [node]))
        attempts[index] += 1
        pending[index] = _start(ray, state, index, ports, object_store_mb, attempts[index])
        _write_state(state_dir, _serialisable(state))


def up(nodes: int, cpus_per_node: int = 1, state_dir: Path = Path(".runyard"), object_store_mb: int = 256,
       timeout_s: float = START_TIMEOUT_S) -> dict:
    """Start a head and ``nodes - 1`` workers on loopback; return the recorded state.

    Returns once every node is ALIVE in the cluster (polled, with a deadline).
    """
    if nodes < 1:
        raise RunyardError(f"cluster up: --nodes: must be at least 1 (got {nodes})")
    if cpus_per_node < 1:
        raise RunyardError(f"cluster up: --cpus-per-node: must be at least 1 (got {cpus_per_node})")
    state_dir = Path(state_dir).resolve()
    old = read_state(state_dir)
    if old and is_up(old):
        raise RunyardError(f"cluster up: a runyard cluster is already up ({old['dashboard_url']}, "
                           f"{len(old['nodes'])} nodes); stop it first with `runyard cluster down`")
    if old:  # left over from a cluster that died: nothing to stop
        _discard(state_dir, old)

    ray = ray_binary()
    _ensure_token(ray, _node_env(head=True))
    # A short path: Ray's unix sockets live below it and are limited to 107 bytes.
    temp_root = Path(tempfile.mkdtemp(prefix="runyard-ray-"))
    gcs_port, client_port = free_ports(2, node_ip(0))
    (dashboard_port,) = free_ports(1, "127.0.0.1")
    ports = (gcs_port, dashboard_port, client_port)
    state = {
        "gcs_address": f"{node_ip(0)}:{gcs_port}",
        "dashboard_url": f"http://127.0.0.1:{dashboard_port}",
        "temp_root": str(temp_root),
        "cpus_per_node": cpus_per_node,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "nodes": [],
    }
    deadline = time.monotonic() + timeout_s
    try:
        _start_until_up(ray, state, [0], ports, object_store_mb, deadline, state_dir)  # workers need its GCS
        _start_until_up(ray, state, list(range(1, nodes)), ports, object_store_mb, deadline, state_dir)
        _wait_alive(state, nodes, deadline)
    except BaseException:
        for node in state["nodes"]:
            if "popen" in node and node["popen"].poll() is None:
                node["popen"].kill()
        _terminate(_processes(state))
        # Keep temp_root: its ray-start.log files say why.
        state_file(state_dir).unlink(missing_ok=True)
        raise
    for node in state["nodes"]:
        node["pids"] = sorted(p.pid for p in _processes(state, [node]))
    _write_state(state_dir, state)
    return state


def _serialisable(state: dict) -> dict:
    return {**state, "nodes": [{k: v for k, v in n.items() if k != "popen"} for n in state["nodes"]]}


def list_nodes(dashboard: str) -> list:
    """Every node the cluster's GCS knows, through the dashboard's state API."""
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    with explicit_address():
        client = StateApiClient(address=dashboard, headers={"Content-Type": "application/json", **auth_headers()})
    return client.list(StateResource.NODES, options=ListApiOptions(detail=True, timeout=10),
                       raise_on_missing_output=False)


def _wait_alive(state: dict, nodes: int, deadline: float) -> None:
    last = "the dashboard did not answer"
    while True:
        try:
            alive = [n for n in list_nodes(state["dashboard_url"]) if _field(n, "state") == "ALIVE"]
            if len(alive) >= nodes:
                return
            last = f"{len(alive)} of {nodes} nodes alive"
        except Exception as e:  # the dashboard comes up after `ray start` returns
            last = f"{type(e).__name__}: {str(e).strip()[:200]}"
        if time.monotonic() > deadline:
            raise RunyardError(f"cluster up: the cluster did not come up in time ({last}; "
                               f"logs under {state['temp_root']})")
        time.sleep(0.25)


def _field(node, name: str):
    return node[name] if isinstance(node, dict) else getattr(node, name)


# --------------------------------------------------------------------------- status


def _require(state_dir: Path) -> dict:
    state = read_state(state_dir)
    if state is None:
        raise RunyardError(f"cluster: no runyard cluster is up here (no {state_file(state_dir)}); "
                           "start one with `runyard cluster up --nodes N`")
    return state


def status(state_dir: Path = Path(".runyard")) -> list[dict]:
    """Print the cluster's nodes and resources as a table; return one dict per node."""
    state = _require(Path(state_dir).resolve())
    if not is_up(state):
        raise RunyardError("cluster: the runyard cluster recorded in "
                           f"{state_file(state_dir)} is not running; clear it with `runyard cluster down`")
    try:
        found = list_nodes(state["dashboard_url"])
    except Exception as e:
        raise RunyardError(f"cluster: the dashboard at {state['dashboard_url']} does not answer "
                           f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})"
                           ) from None
    rows = []
    for n in found:
        res = _field(n, "resources_total") or {}
        index = next((k.removeprefix("node_") for k in res if k.startswith("node_") and k[5:].isdigit()), "?")
        rows.append({
            "node": index, "role": "head" if _field(n, "is_head_node") else "worker",
            "state": _field(n, "state"), "node_id": _field(n, "node_id"),
            "cpus": res.get("CPU", 0), "object_store_mb": res.get("object_store_memory", 0) / 2**20,
            "resources": {k: v for k, v in res.items() if k.startswith("node_")},
        })
    rows.sort(key=lambda r: (r["state"] != "ALIVE", str(r["node"]).zfill(4)))
    table = Table(title=f"runyard cluster  {state['dashboard_url']}  (GCS {state['gcs_address']})")
    for col in ("node", "role", "state", "node id", "CPU", "object store", "custom resources"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["node"]), r["role"], r["state"], r["node_id"][:12], f"{r['cpus']:g}",
                      f"{r['object_store_mb']:.0f} MiB", ", ".join(f"{k}: {v:g}" for k, v in r["resources"].items()))
    console = report_console()
    console.print(table)
    alive = [r for r in rows if r["state"] == "ALIVE"]
    console.print(f"{len(alive)} of {len(state['nodes'])} nodes alive, "
                  f"{sum(r['cpus'] for r in alive):g} CPUs. Submit work with: runyard submit -- dvc repro")
    return rows


# --------------------------------------------------------------------------- down


def down(state_dir: Path = Path(".runyard"), grace_s: float = 5.0) -> int:
    """Stop the jobs still running, then exactly this cluster's processes; return how many."""
    state_dir = Path(state_dir).resolve()
    state = _require(state_dir)
    procs = _processes(state)
    if procs:
        from runyard.execution import jobs  # here: the local Ray's watchdog imports this module too

        jobs.stop_running(state["dashboard_url"])
        procs = _processes(state)
    _terminate(procs, grace_s)
    _discard(state_dir, state)
    return len(procs)


def _discard(state_dir: Path, state: dict) -> None:
    shutil.rmtree(state["temp_root"], ignore_errors=True)
    state_file(state_dir).unlink(missing_ok=True)
