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
