"""Settings a deployment gives by environment (k8s/ sets them in every runyard pod)."""

from __future__ import annotations

import pytest

from runyard.config import ENV_SETTINGS


def test_env_settings_win_over_params_yaml(project, monkeypatch):
    assert project.params.mlflow.artifact_root == "mlruns/artifacts"  # the repo's value
    monkeypatch.setenv("RUNYARD_ARTIFACT_ROOT", "s3://bucket/mlflow")
    monkeypatch.setenv("RUNYARD_STORAGE_PATH", "/shared/ray")
    del project.params  # cached_property: read params.yaml again
    assert project.params.mlflow.artifact_root == "s3://bucket/mlflow"
    assert project.params.ray.storage_path == "/shared/ray"
    # the other keys of those sections still come from params.yaml
    assert project.params.mlflow.champion_alias == "champion"
    assert project.params.ray.placement_strategy == "PACK"


@pytest.mark.parametrize("value", ["", "  "])
def test_empty_env_setting_is_ignored(project, monkeypatch, value):
    monkeypatch.setenv("RUNYARD_ARTIFACT_ROOT", value)
    assert project.params.mlflow.artifact_root == "mlruns/artifacts"


def test_env_settings_name_real_keys():
    from runyard.config import Params

    for section, key in ENV_SETTINGS.values():
        assert key in Params.model_fields[section].annotation.model_fields


def test_jobs_and_cluster_workers_get_the_tracking_credentials(project, monkeypatch):
    """What `runyard submit` gives a job, and what a cluster's training workers get."""
    from runyard.execution.jobs import job_env
    from runyard.execution.ray_session import forwarded_env

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert "MLFLOW_TRACKING_PASSWORD" not in job_env(project) and forwarded_env() is None
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    env = job_env(project)
    assert env["MLFLOW_TRACKING_USERNAME"] == "alice" and env["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    assert env["MLFLOW_TRACKING_URI"].startswith("sqlite:///") and "DVC_SYSTEM_CONFIG_DIR" in env
    assert forwarded_env() == {"env_vars": {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "s3cret"}}
