"""Production mode, for real: the same commands against a shared tracking server.

The stack (tests/services.py): an MLflow server with basic auth on PostgreSQL, its
artifacts proxied to S3 (moto's server), a DVC remote on the same S3, and a Ray
cluster reached by address. A tiny pipeline runs with `dvc repro`, its data and
models are pushed, and a fresh clone of the project pulls them and reproduces the
champion from its lineage to the same metrics.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from runyard.errors import RunyardError
from tests.conftest import copy_project, one_line_error, runyard_cli
from tests.integration.test_pipeline import edit

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXP, DATASET = "mnist1d_logistic", "mnist1d"
GIT = ["git", "-c", "user.name=runyard-tests", "-c", "user.email=tests@runyard.invalid"]


def sh(*cmd: str, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command with ``env`` on top of this environment (this venv first on PATH); it must succeed."""
    bin_dir = str(Path(sys.executable).parent)
    full = {**os.environ, **env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(list(cmd), cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{(done.stdout + done.stderr)[-4000:]}"
    return done


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A one-node Ray cluster (token auth on), used by address as a production one would be."""
    from runyard.execution import cluster

    if not (Path(sys.executable).parent / "ray").is_file():
        from tests.services import missing

        missing(f"the `ray` command is not installed next to {sys.executable}")
    state_dir = tmp_path_factory.mktemp("ray") / ".runyard"
    state = cluster.up(nodes=1, cpus_per_node=2, state_dir=state_dir)
    try:
        yield {"RAY_ADDRESS": state["gcs_address"], "RAY_AUTH_MODE": "token"}
    finally:
        cluster.down(state_dir)


@pytest.fixture(scope="module")
def trained(production_stack, ray_cluster, tmp_path_factory):
    """A tiny project trained, evaluated and registered on the stack, data and models pushed.

    Returns (project root, the environment its commands ran with)."""
    stack = production_stack
    root = copy_project(tmp_path_factory.mktemp("prod") / "project")
    edit(root / "params.yaml", lambda p: p.update(
        experiments={EXP: DATASET}, searches={}, datasets={DATASET: {"num_samples": 1000, "val_samples": 200}}))
    edit(root / f"pipelines/{EXP}.yaml", lambda p: p["recipe"].update(epochs=3) or p["recipe"].pop("steps"))
    edit(root / "dvc.yaml", lambda d: d["stages"].pop("paper"))  # reads experiments not trained here
    env = {**stack.env, **ray_cluster}
    sh("dvc", "remote", "add", "-d", "storage", f"{stack.bucket}/dvc", cwd=root, env=env)
    sh("dvc", "remote", "modify", "storage", "endpointurl", stack.s3.endpoint, cwd=root, env=env)
    sh(*GIT, "add", "params.yaml", "dvc.yaml", "pipelines", ".dvc/config", cwd=root, env=env)
    sh(*GIT, "commit", "-qm", "tiny production pipeline", cwd=root, env=env)

    sh("dvc", "repro", cwd=root, env=env, timeout=900)
    sh(*GIT, "add", "dvc.lock", cwd=root, env=env)
    sh(*GIT, "commit", "-qm", "pipeline results", cwd=root, env=env)
    sh("dvc", "push", cwd=root, env=env)
    return root, env


def client(env: dict, monkeypatch):
    """An MLflow client with the stack's credentials (MLflow reads them from the environment)."""
    from mlflow import MlflowClient

    for key, value in env.items():
        if key.startswith("MLFLOW_TRACKING_"):
            monkeypatch.setenv(key, value)
    return MlflowClient(env["MLFLOW_TRACKING_URI"])


def test_the_tracking_server_refuses_requests_without_credentials(production_stack, project_dir, monkeypatch):
    from runyard.tracking.uri import check_reachable

    url = production_stack.tracking.url
    assert requests.get(f"{url}/api/2.0/mlflow/experiments/search", timeout=30).status_code == 401
    assert requests.get(f"{url}/health", timeout=30).status_code == 200

    # runyard says so in one line, before any work, naming where the URI came from.
    line = one_line_error(runyard_cli("reproduce", f"{EXP}@champion", cwd=project_dir,
                                      env={"MLFLOW_TRACKING_URI": url}))
    assert line == (f"runyard: error: MLFLOW_TRACKING_URI: tracking server {url} requires credentials (401): "
                    "set MLFLOW_TRACKING_USERNAME/PASSWORD"), line
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    with pytest.raises(RunyardError, match=r"refused the credentials of user 'admin' \(401\)"):
        check_reachable(url, "MLFLOW_TRACKING_URI")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", production_stack.tracking.password)
    check_reachable(url, "MLFLOW_TRACKING_URI")


def test_pipeline_records_to_the_server_with_artifacts_on_s3(trained, production_stack, monkeypatch):
    root, env = trained
    c = client(env, monkeypatch)
    champion = c.get_model_version_by_alias(EXP, "champion")
    run = c.get_run(champion.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["runyard.git.dirty"] == "false"
    assert run.data.tags["runyard.ray.address"] == env["RAY_ADDRESS"]
    assert run.data.tags[f"runyard.data.{DATASET}.md5"].endswith(".dir")
    assert "test/acc" in run.data.metrics
    # The server proxies artifacts to S3: the model is in the bucket, not on this machine.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    bucket = production_stack.bucket.removeprefix("s3://")
    keys = [o["Key"] for o in production_stack.s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.startswith("mlflow/") and k.endswith("/MLmodel") for k in keys), keys
    assert any(k.startswith("dvc/files/md5/") for k in keys), keys
    assert not (root / "mlruns" / "artifacts").exists()


def test_a_fresh_clone_reproduces_the_champion(trained, tmp_path, monkeypatch):
    root, env = trained
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(root), str(clone), cwd=tmp_path, env=env)
    sh("dvc", "pull", "--allow-missing", cwd=clone, env=env)  # catalogue stages never run: nothing to pull
    assert (clone / "data" / DATASET / "meta.json").is_file()

    done = sh(sys.executable, "-m", "runyard", "reproduce", f"{EXP}@champion", cwd=clone, env=env, timeout=900)
    out = done.stdout
    print(out)
    assert "all" in out and "within 0.0001" in out, out
    c = client(env, monkeypatch)
    champion = c.get_model_version_by_alias(EXP, "champion")
    recorded = c.get_run(champion.run_id)
    new = [r for r in c.search_runs([recorded.info.experiment_id])
           if r.data.tags.get("runyard.reproduction.of") == champion.run_id]
    assert len(new) == 1
    reproduced = new[0]
    assert reproduced.data.tags["runyard.git.commit"] == recorded.data.tags["runyard.git.commit"]
    for key in ("test/acc", "val/acc", "val/loss"):
        assert reproduced.data.metrics[key] == pytest.approx(recorded.data.metrics[key], abs=1e-4), key
    # Reproducing registers nothing and leaves the alias where it was.
    assert [v.version for v in c.search_model_versions(f"name='{EXP}'")] == [champion.version]
    assert c.get_model_version_by_alias(EXP, "champion").version == champion.version
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=clone, capture_output=True, text=True).stdout
    assert worktrees.count("\n") == 1, worktrees  # the temporary one is gone
