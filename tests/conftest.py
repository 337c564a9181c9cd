"""Shared fixtures: every test works in a throwaway copy of the project.

A test never writes into the repository: ``project_dir`` copies the project's
definition files (params.yaml, dvc.yaml, pipelines/, .dvc/config) into a temp
dir, makes it a git repo, and chdirs there. MLflow's embedded store therefore
lives under that temp dir too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("params.yaml", "dvc.yaml", "pipelines", ".dvc/config", ".dvc/.gitignore",
                 ".gitignore", "mlruns/.gitkeep")

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# As the `runyard` command does (cli.main), before any test imports scikit-learn.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


_PROJECTS: list[Path] = []
"""Every project copy made, so that their warm local Rays are stopped after the test."""


def copy_project(dest: Path) -> Path:
    _PROJECTS.append(dest)
    for rel in PROJECT_FILES:
        src, dst = REPO / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
    # The platform code is a DVC dependency of the stages: link it so `dvc repro` sees it.
    (dest / "platform").symlink_to(REPO / "platform")
    git = ["git", "-c", "user.name=runyard-tests", "-c", "user.email=tests@runyard.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "test project"], cwd=dest, check=True)
    return dest


@pytest.fixture(autouse=True)
def _no_warm_ray_left():
    """A project's warm local Ray (execution/local_ray.py) and command server (forkserver.py)
    outlive its commands: stop the ones this test's projects started, as `runyard local down` does."""
    yield
    from runyard import forkserver
    from runyard.execution import local_ray

    for root in _PROJECTS:
        forkserver.stop_warm_up(root)  # a dvc repro's background warm-up, before the Ray it may start
        if (root / ".runyard" / "local.json").exists():
            local_ray.down(root / ".runyard")
        forkserver.stop(root)  # the project's command server, if a `runyard` command started one


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """No test sees the developer's cluster or tracking server by accident."""
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


@pytest.fixture
def cut_off_next_run_creation(monkeypatch):
    """Call it, and MlflowClient.create_run's next call stores its run, then fails as a server
    that died before it answered would (a dropped connection). Returns the list that gets
    that run's id; later calls go through."""
    import requests
    from mlflow import MlflowClient

    def arm() -> list[str]:
        create_run, cut = MlflowClient.create_run, []

        def stored_then_cut_off(self, *args, **kwargs):
            run = create_run(self, *args, **kwargs)
            if not cut:
                cut.append(run.info.run_id)
                raise requests.ConnectionError("Connection aborted: Remote end closed connection without response")
            return run

        monkeypatch.setattr(MlflowClient, "create_run", stored_then_cut_off)
        return cut

    return arm


@pytest.fixture
def project_dir(tmp_path, monkeypatch) -> Path:
    root = copy_project(tmp_path / "project")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def project(project_dir):
    from runyard.project import Project

    return Project(project_dir)


def runyard_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600):
    """Run the real `runyard` command; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "runyard", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


def require_ray_cli() -> None:
    """A test that starts `ray start` nodes needs Ray's command: skip without it, fail on CI."""
    if not (Path(sys.executable).parent / "ray").is_file():
        message = f"the `ray` command is not installed next to {sys.executable}"
        if ON_CI:
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def ray_cluster(root: Path, nodes: int, cpus_per_node: int = 1, **options) -> Iterator[dict]:
    """A real multi-node Ray cluster for the project at ``root``: one `ray start` per node on
    127.0.0.x, token auth on (``runyard.execution.cluster``), always stopped. Yields its state;
    ``cluster_env(state)`` is what a `runyard` command needs to train on it."""
    from runyard.execution import cluster

    require_ray_cli()
    state_dir = root / ".runyard"
    state = cluster.up(nodes=nodes, cpus_per_node=cpus_per_node, state_dir=state_dir, **options)
    try:
        yield state
    finally:
        cluster.down(state_dir)


def cluster_env(state: dict) -> dict[str, str]:
    """The environment of a command using the cluster by address, as a production one would be."""
    return {"RAY_ADDRESS": state["gcs_address"], "RAY_AUTH_MODE": "token"}


def files_under(root: Path) -> set[str]:
    """Every file below ``root`` (relative), ignoring git's own."""
    return {
        str(p.relative_to(root)) for p in root.rglob("*")
        if p.is_file() and not {".git", "platform"} & set(p.relative_to(root).parts)
    }


@pytest.fixture(scope="session")
def _prepared_data(tmp_path_factory) -> Path:
    """Each dataset built once per session (with params.yaml's defaults)."""
    from runyard.commands.prepare import prepare
    from runyard.data import DATASETS
    from runyard.project import Project

    root = copy_project(tmp_path_factory.mktemp("prepared"))
    project = Project(root)
    for name in DATASETS:
        prepare(project, name)
    return root / "data"


@pytest.fixture
def prepared(project_dir, _prepared_data) -> Path:
    """``project_dir`` with data/ already prepared."""
    shutil.copytree(_prepared_data, project_dir / "data")
    return project_dir


@pytest.fixture
def one_thread():
    """Torch on one thread. Small models are barely slower on idle cores and far faster
    on busy ones: two OpenMP threads fighting other processes measured 2x (sequence
    models) to 15x (a tiny U-Net) slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def one_line_error(result) -> str:
    """Assert the CLI failed the runyard way (exit 2, exactly one error line); return that line."""
    assert result.returncode == 2, (result.stdout + result.stderr)[-2000:]
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("runyard: error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


def assert_one_line_config_error(call, fragments) -> None:
    """``call()`` raises one RunyardError line containing every fragment."""
    from runyard.errors import RunyardError

    with pytest.raises(RunyardError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


# Real services (PostgreSQL, S3, MLflow server) as session fixtures: tests/services.py.
pytest_plugins = ("tests.services",)


@pytest.fixture(autouse=True)
def isolated_mlflow(monkeypatch):
    """Using a store in-process sets MLflow's process-wide tracking and registry URIs:
    restore them after every test, so no test reads another's store."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
