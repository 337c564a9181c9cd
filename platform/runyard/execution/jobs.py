"""Ray Jobs: run a command on a Ray cluster with the project as its working directory.

``submit`` uploads the project (code, params.yaml, dvc.yaml, pipelines/, dvc.lock),
without data/, models/, mlruns/, .git/ and other local state, and runs the command
there. What a job needs that the upload leaves out:

- **data**: run the pipeline, ``runyard submit -- dvc repro`` (or ``dvc repro
  train@mnist1d_cnn``). Its prepare stages rebuild data/ inside the job's copy,
  deterministically (seeded, from the same code and params). DVC wants a git
  repository and the copy has none, so the job runs DVC with ``core.no_scm`` (a
  system-level DVC config under the submitting project's .runyard/jobs/, found
  through ``DVC_SYSTEM_CONFIG_DIR``). Lineage tags then say git commit "none"; the
  job's metadata (``runyard.git.*``, shown by the dashboard) has the submitter's.
- **tracking**: the job gets ``MLFLOW_TRACKING_URI`` made absolute against the
  submitting project, so on this machine the job's runs land in the project's own
  ``mlruns/mlflow.db``. A local ``mlflow.artifact_root`` is relative to the project,
  which inside a job is Ray's temporary copy: every experiment is created first,
  here, with its artifact location in the submitting project, so models logged by
  the job are not lost with that copy.
  The tracking server's credentials (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/
  ``TOKEN``), when set here, go along in the job's runtime env: anyone who can read
  the job's details on the dashboard can read them, as anyone who can submit a job
  could. That is one more reason to keep the Jobs API inside the cluster.
- **cluster**: Ray sets ``RAY_ADDRESS`` in the job to the cluster's GCS address
  (overriding any value in the runtime env), so ``runyard train`` inside the job
  uses the cluster it runs on instead of starting a local Ray.

What stays in the job's copy (models/, metrics/, plots/, dvc.lock) is discarded
with it: the results that persist are the MLflow runs, models and registry.

On a real multi-node cluster the paths above are on the submitting machine and mean
nothing to the nodes: use a tracking server (``http://...``, artifacts on S3), a DVC
remote (``dvc repro --pull`` fetches cached data instead of rebuilding it), shared
storage for ``ray.storage_path``, and ``core.no_scm`` in the project's DVC config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from mlflow import MlflowClient
from rich.table import Table

from runyard.errors import RunyardError, first_line
from runyard.execution.ray_auth import auth_headers, explicit_address
from runyard.execution.ray_session import forwarded_env
from runyard.progress import report_console
from runyard.project import Project
from runyard.tracking.lineage import git_state
from runyard.tracking.runs import ensure_experiment
from runyard.tracking.uri import artifact_location, check_reachable, resolve

EXCLUDES = [
    "/data/", "/mlruns/", "/models/", "/.venv/", "/.git/", "/.runyard/", "/plots/", "/metrics/",
    "/.dvc/cache/", "/.dvc/tmp/", "/dvc_plots/", "__pycache__/", "/.pytest_cache/", "/.ruff_cache/",
]
DVC_NO_SCM = "[core]\n    no_scm = true\n"
# The SDK logs every file it skips and every upload at INFO; `.git` is excluded above anyway.
QUIET = {"ray.dashboard.modules.dashboard_sdk": logging.WARNING, "ray.dashboard.modules.job.sdk": logging.WARNING,
         "ray._private.runtime_env.packaging": logging.WARNING, "ray._private.runtime_env.working_dir": logging.ERROR}


def _check_address(address: str) -> None:
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or not parsed.port:
        raise RunyardError(f"--address: {address!r} is not a Ray dashboard URL; allowed: http(s)://HOST:PORT, "
                           "e.g. http://127.0.0.1:8265")
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=3).close()
    except OSError as e:
        raise RunyardError(f"--address: nothing answers at {address} ({e.strerror or e})") from None


def client(address: str):
    """A JobSubmissionClient for ``address``, with the token sent explicitly; one-line errors."""
    _check_address(address)
    from ray.job_submission import JobSubmissionClient

    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(level)
    try:
        with explicit_address():
            return JobSubmissionClient(address, headers=auth_headers())
    except Exception as e:  # ConnectionError, AuthenticationError, RuntimeError (not a Ray dashboard)
        raise RunyardError(f"--address: {address}: {first_line(e)}") from None


def _call(what: str, fn, *args):
    try:
        return fn(*args)
    except RunyardError:
        raise
    except Exception as e:  # the SDK raises RuntimeError for 404s and failed requests
        raise RunyardError(f"{what}: {first_line(e)}") from None


# --------------------------------------------------------------------------- submit


def job_env(project) -> dict[str, str]:
    """Environment variables every job of this project gets (see the module docstring)."""

    where = f"{project.rel(project.params_file)}: mlflow.tracking_uri"
    uri = resolve(project.params.tracking_uri, project.root)
    check_reachable(uri, where)
    dvc_config = project.root / ".runyard" / "jobs" / "dvc"
    dvc_config.mkdir(parents=True, exist_ok=True)
    (dvc_config / "config").write_text(DVC_NO_SCM)
    # The tracking server's credentials travel as they do to a cluster's training workers.
    credentials = (forwarded_env() or {}).get("env_vars", {})
    # Optuna's study state too: the job runs in a copy of the project, which has no mlruns/.
    study = resolve(project.params.study_storage, project.root)
    return {"MLFLOW_TRACKING_URI": uri, "OPTUNA_STORAGE": study, "DVC_SYSTEM_CONFIG_DIR": str(dvc_config),
            **credentials}


def _anchor_artifacts(project, uri: str) -> None:
    """Create the project's MLflow experiments with their artifacts in the submitting project."""
    root_setting = project.params.mlflow.artifact_root
    if "://" in root_setting:
        return

    tracking = MlflowClient(uri)
    for name in project.experiment_names():
        ensure_experiment(tracking, name, artifact_location(root_setting, project.root, name))


def submit(address: str, entrypoint: list[str], project_root: Path, follow: bool = True) -> int:
    """Run ``entrypoint`` as a Ray job on ``address``; return 0 if it SUCCEEDED, 1 otherwise.

    With ``follow`` the job's output is streamed until it ends; without, the job id
    is printed and 0 returned once it is submitted.
    """

    if not entrypoint:
        raise RunyardError("submit: no command given; e.g. runyard submit -- dvc repro")
    jobs = client(address)
    project = Project(Path(project_root))
    env = job_env(project)
    _anchor_artifacts(project, env["MLFLOW_TRACKING_URI"])
    git = git_state(project.root)
    metadata = {"runyard.project": str(project.root), "runyard.git.commit": git["runyard.git.commit"],
                "runyard.git.dirty": git["runyard.git.dirty"]}
    runtime_env = {"working_dir": str(project.root), "excludes": EXCLUDES, "env_vars": env}
    job_id = _call("submit", lambda: jobs.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=runtime_env,
                                                     metadata=metadata))
    if not follow:
        print(job_id, flush=True)
        return 0
    _err(f"runyard: submitted {job_id} to {address}; stop it with `runyard stop {job_id}`")
    return _follow(jobs, job_id)


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _follow(jobs, job_id: str) -> int:
    try:
        asyncio.run(_tail(jobs, job_id))
    except KeyboardInterrupt:
        _err(f"runyard: stopped following {job_id}; it keeps running (`runyard stop {job_id}` stops it)")
        return 130
    except Exception as e:  # the log stream broke: the job's status still says how it ended
        _err(f"runyard: lost the log stream of {job_id} ({first_line(e)}); waiting for it to end")
    info = wait(jobs, job_id)
    if info.status == "SUCCEEDED":
        _err(f"runyard: job {job_id} SUCCEEDED")
        return 0
    _err(f"runyard: job {job_id} {info.status}: {info.message or ''}".rstrip(": "))
    return 1


async def _tail(jobs, job_id: str) -> None:
    async for chunk in jobs.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def wait(jobs, job_id: str, timeout_s: float | None = None, poll_s: float = 0.2):
    """Poll until the job is in a terminal state; return its JobDetails."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        info = _call(f"job {job_id}", jobs.get_job_info, job_id)
        if info.status.is_terminal():
            return info
        if deadline is not None and time.monotonic() > deadline:
            raise RunyardError(f"job {job_id}: still {info.status} after {timeout_s:g} s")
        time.sleep(poll_s)


# --------------------------------------------------------------------------- jobs, logs, stop


def list_jobs(address: str) -> list:
    """Print every job of the cluster, oldest first, as a table; return their JobDetails."""

    found = sorted(_call("jobs", client(address).list_jobs), key=lambda j: j.start_time or 0)
    table = Table(title=f"Ray jobs on {address}")
    for col, width in (("job", 26), ("status", 9), ("started", 8), ("duration", 8)):
        table.add_column(col, no_wrap=True, min_width=width)
    table.add_column("entrypoint", max_width=40)
    for j in found:
        started = time.strftime("%H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "-"
        end = j.end_time or (time.time() * 1000 if j.start_time else None)
        took = f"{(end - j.start_time) / 1000:.1f} s" if j.start_time and end else "-"
        entry = j.entrypoint if len(j.entrypoint) <= 60 else j.entrypoint[:57] + "..."
        table.add_row(j.submission_id or j.job_id or "-", str(j.status), started, took, entry)
    report_console().print(table)
    return found


def logs(address: str, job_id: str, follow: bool = False) -> int:
    """Print a job's output; with ``follow``, until it ends (then return as ``submit`` does)."""
    jobs = client(address)
    if follow:
        _call(f"job {job_id}", jobs.get_job_info, job_id)
        return _follow(jobs, job_id)
    sys.stdout.write(_call(f"job {job_id}", jobs.get_job_logs, job_id))
    sys.stdout.flush()
    return 0


def stop(address: str, job_id: str, timeout_s: float = 60.0) -> str:
    """Stop a job (SIGTERM, then SIGKILL after Ray's grace period); return its final status."""
    jobs = client(address)
    was_running = _call(f"job {job_id}", jobs.stop_job, job_id)
    info = wait(jobs, job_id, timeout_s)
    _err(f"runyard: job {job_id} {info.status}" if was_running
         else f"runyard: job {job_id} was not running ({info.status})")
    return str(info.status)


def stop_running(dashboard: str, timeout_s: float = 15.0) -> None:
    """Stop every running job (before a cluster goes down): `ray job stop` sends SIGTERM,
    so a runyard training ends its MLflow run KILLED, not RUNNING. Best effort."""
    with contextlib.suppress(Exception):
        jobs = client(dashboard)
        running = [j.submission_id for j in jobs.list_jobs() if not j.status.is_terminal() and j.submission_id]
        for job_id in running:
            jobs.stop_job(job_id)
        deadline = time.monotonic() + timeout_s
        while running and time.monotonic() < deadline:
            running = [j for j in running if not jobs.get_job_status(j).is_terminal()]
            time.sleep(0.2)
