"""Connect to Ray: a local instance on 127.0.0.1 by default, or a cluster address.

Checks run before any work: an unreachable address or a cluster too small for
the requested workers is one line, not a minute of waiting for resources that
never come.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from urllib.parse import urlparse

from runyard.config import RayParams
from runyard.errors import RunyardError

LOCAL = "local"

# Ray Train V2's controller polls its workers every health-check interval (2 s by
# default): each fit pays up to one interval at its end, and each checkpoint report
# waits about one interval. 0.1 s removes ~4 s per training. Metrics export and the
# preemption watcher are extra actors a course-sized run does not need.
# Set before fit(): Ray Train hands them on to its controller and workers.
TRAIN_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # A search's trials checkpoint often (tiny files: tuning.results.checkpointed_reports);
    # Tune's warning about the resulting state snapshots is noise for course-sized trials.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Ctrl-C is an interruption (runs end KILLED, `--resume` continues), not Tune's
    # graceful stop that would return a partial search as if it were done.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # Save Tune's experiment state every second (default: every 10 s or more), so a
    # killed search forgets at most a second of trial starts; children.py cleans up those.
    "TUNE_GLOBAL_CHECKPOINT_S": "1",
}


# Rank 0 logs epochs to the tracking server. A local Ray's workers inherit this
# process's environment; a cluster's do not, so its credentials travel with the job.
FORWARDED = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
             "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH")


_shipped: tuple[str, ...] = ()
"""The user's code folders the Ray connection of this process ships (``py_modules``)."""


def forwarded_env(code_paths: tuple[str, ...] | list[str] = ()) -> dict | None:
    """A Ray runtime env carrying the MLflow client settings set here to a cluster's workers,
    and ``code_paths``, the user's own packages (``py_modules``), to every worker and trial."""
    env = {k: os.environ[k] for k in FORWARDED if os.environ.get(k)}
    runtime_env: dict = {"env_vars": env} if env else {}
    if code_paths and not in_ray_job():
        runtime_env["py_modules"] = list(code_paths)
    return runtime_env or None


def in_ray_job() -> bool:
    """Whether this driver runs as a Ray job (``runyard submit``): the job's working_dir
    already carries the project, the user's code included, to every worker."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def address_of(ray_params: RayParams) -> str:
    return os.environ.get("RAY_ADDRESS") or ray_params.address or LOCAL


def connect(ray_params: RayParams, where: str, need: RayParams | None = None, need_where: str = "",
            code_paths: tuple[str, ...] | list[str] = ()) -> str:
    """Initialise Ray once per process, check that it can place ``need`` (default: the
    workers of ``ray_params``; ``need_where`` names that setting), return its address.

    ``code_paths``: the user's own model packages (``runyard.models.user_code_paths``),
    shipped to every Ray worker and Tune trial, local or on a cluster.

    A local Ray is checked against this machine before it is started: a request it can
    never meet fails in a blink rather than after Ray's start-up.
    """
    import ray

    global _shipped
    address = address_of(ray_params)
    need, need_where = need or ray_params, need_where or where
    code = tuple(dict.fromkeys([*_shipped, *code_paths]))
    if ray.is_initialized():
        if set(code) <= set(_shipped) or in_ray_job():
            check_resources(need, need_where)
            return address
        # A runtime env is fixed when Ray is initialised: connect again, shipping the new code too.
        ray.shutdown()
    _shipped = code
    # Keep a local Ray on loopback rather than the machine's public interface.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    for key, value in TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    with _sigterm_kept():
        _init(ray_params, address, code, need, need_where, where, quiet)
    check_resources(need, need_where)
    return address


@contextlib.contextmanager
def _sigterm_kept():
    """ray.init installs a SIGTERM handler of its own (exit 15); a handler the caller set
    stays (the CLI's, which ends the command's MLflow runs KILLED and exits 143)."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if callable(handler):
            signal.signal(signal.SIGTERM, handler)


def _init(ray_params: RayParams, address: str, code: tuple[str, ...], need: RayParams, need_where: str,
          where: str, quiet: dict) -> None:
    import ray

    if address == LOCAL:
        # CPUs and GPUs only: a local Ray's other resources (memory) are known once it runs.
        have = local_resources()
        check_resources(need.model_copy(update={"resources_per_worker": {}}), need_where, have)
        if ray_params.local_idle_s > 0:
            _connect_shared(ray_params, code, have, quiet)
        else:  # a private Ray for this process only (local_idle_s: 0)
            env = forwarded_env(code)
            ray.init(address="local", _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
                     runtime_env={"py_modules": env["py_modules"]} if env and "py_modules" in env else None,
                     **quiet)
    else:
        _check_reachable(address, where)
        try:
            ray.init(address=address, runtime_env=forwarded_env(code), **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RunyardError(f"{where}: ray.address: cannot connect to {address}: {first}") from None


_shared: str | None = None
"""The GCS address of the project's warm local Ray this process is connected to, if any."""


def shared_local() -> str | None:
    """The project's warm local Ray this process uses (see ``execution.local_ray``), if any."""
    import ray

    return _shared if _shared and ray.is_initialized() else None


def _connect_shared(ray_params: RayParams, code: tuple[str, ...], have: dict[str, float], quiet: dict) -> None:
    """Connect to the project's warm local Ray, starting it if none runs (``execution.local_ray``)."""
    import ray

    from runyard.execution import local_ray

    global _shared
    state_dir = local_ray.state_dir_for()
    address = local_ray.ensure(state_dir, ray_params.local_idle_s, have["CPU"], have["GPU"])
    local_ray.register_client(state_dir)
    # The head was started by another process: its workers do not inherit this one's
    # environment, so MLflow's credentials travel as they do to a cluster.
    os.environ["RAY_AUTH_MODE"] = "token"
    # Ray read its config (the auth mode among it) when it was imported: read it again.
    from ray._raylet import Config

    Config.initialize("")
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
        # Read when Ray is imported: a late setting must still keep 127.0.0.1 from being
        # rewritten to this machine's outside address.
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address=address, runtime_env=forwarded_env(code), **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunyardError(f"local Ray at {address}: cannot connect: {first}; "
                           "stop it with `runyard local down` and run again") from None
    _shared = address


def local_resources() -> dict[str, float]:
    """The CPUs and GPUs a local Ray would find here: Ray's own CPU count (it reads
    cgroup quotas too), and the CUDA devices torch sees (CUDA_VISIBLE_DEVICES applies)."""
    import torch

    try:
        from ray._private.utils import get_num_cpus
    except ImportError:  # a Ray without it: the scheduler's affinity is the next best count
        cpus = len(os.sched_getaffinity(0))
    else:
        cpus = get_num_cpus()
    return {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())}


def _check_reachable(address: str, where: str) -> None:
    if address == "auto":
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise RunyardError(
            f"{where}: ray.address: {address!r} is not an address; "
            "allowed: auto, HOST:PORT, ray://HOST:PORT"
        )
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        raise RunyardError(
            f"{where}: ray.address: nothing answers at {host}:{port} ({e.strerror or e})"
        ) from None


def check_resources(ray_params: RayParams, where: str, have: dict[str, float] | None = None) -> None:
    """Fail before training if the cluster (or ``have``) can never place the requested workers."""
    import ray

    have = ray.cluster_resources() if have is None else have
    n = ray_params.num_workers
    need = {"CPU": n * ray_params.cpus_per_worker}
    if ray_params.use_gpu:
        need["GPU"] = n * 1.0
    for key, amount in ray_params.resources_per_worker.items():
        need[key] = need.get(key, 0) + n * amount
    for key, amount in need.items():
        if have.get(key, 0) < amount:
            knob = {"CPU": "num_workers", "GPU": "use_gpu"}.get(key, "resources_per_worker")
            raise RunyardError(
                f"{where}: ray.{knob}: {n} worker(s) need {amount:g} {key} in all; "
                f"the cluster has {have.get(key, 0):g}"
            )
