"""Bad input at the command line: exit 2, one line naming file/key/allowed, nothing written."""

from __future__ import annotations

import sqlite3

import pytest
import yaml

from tests.conftest import files_under, one_line_error, runyard_cli


def run_count(project_dir) -> int:
    db = project_dir / "mlruns" / "mlflow.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from runs").fetchone()[0]


def set_param(project_dir, section, key, value):
    path = project_dir / "params.yaml"
    data = yaml.safe_load(path.read_text())
    data[section][key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_unknown_experiment(project_dir):
    before = files_under(project_dir)
    err = one_line_error(runyard_cli("train", "mnist1d_cnm", cwd=project_dir))
    assert "pipelines/mnist1d_cnm.yaml: no such experiment" in err and "mnist1d_cnn" in err
    assert files_under(project_dir) == before


def test_negative_learning_rate(project_dir):
    path = project_dir / "pipelines" / "digits_cnn.yaml"
    path.write_text(path.read_text().replace("lr: 0.003", "lr: -0.003"))
    before = files_under(project_dir)
    err = one_line_error(runyard_cli("train", "digits_cnn", cwd=project_dir))
    assert "pipelines/digits_cnn.yaml: recipe.lr: Input should be greater than 0" in err
    assert files_under(project_dir) == before


def test_typo_in_params(project_dir):
    path = project_dir / "params.yaml"
    path.write_text(path.read_text().replace("num_workers:", "num_wrkers:"))
    before = files_under(project_dir)
    err = one_line_error(runyard_cli("train", "digits_cnn", cwd=project_dir))
    assert "params.yaml: ray.num_wrkers: unknown key; allowed:" in err and "num_workers" in err
    assert files_under(project_dir) == before


def test_missing_data(project_dir):
    before = files_under(project_dir)
    err = one_line_error(runyard_cli("train", "digits_cnn", cwd=project_dir))
    assert "data/digits: missing x_train.npy" in err and "prepare@digits" in err
    assert files_under(project_dir) == before


def test_missing_model_for_evaluate_and_register(prepared):
    before = files_under(prepared)
    for verb in ("evaluate", "register"):
        err = one_line_error(runyard_cli(verb, "digits_cnn", cwd=prepared))
        assert "models/digits_cnn: no trained model" in err
    assert files_under(prepared) == before


def test_unreachable_tracking_server(prepared):
    before = files_under(prepared)
    result = runyard_cli("train", "digits_cnn", cwd=prepared,
                         env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    err = one_line_error(result)
    # The URI came from the environment, so the line names the variable, not params.yaml.
    assert "MLFLOW_TRACKING_URI: tracking server http://127.0.0.1:9 is unreachable" in err
    assert files_under(prepared) == before


def test_file_store_uri_is_refused(prepared):
    err = one_line_error(runyard_cli("train", "digits_cnn", cwd=prepared,
                                     env={"MLFLOW_TRACKING_URI": "./mlruns"}))
    assert "file store is deprecated" in err and "sqlite:///" in err


def test_unreachable_ray_address(prepared):
    set_param(prepared, "ray", "address", "127.0.0.1:9")
    err = one_line_error(runyard_cli("train", "digits_cnn", cwd=prepared))
    assert "params.yaml: ray.address: nothing answers at 127.0.0.1:9" in err
    assert run_count(prepared) == 0
    assert not (prepared / "models").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("num_workers", 16, "ray.num_workers: 16 worker(s) need 16 CPU in all; the cluster has"),
        ("use_gpu", True, "ray.use_gpu: 1 worker(s) need 1 GPU in all; the cluster has 0"),
    ],
)
def test_cluster_too_small(prepared, key, value, expected):
    set_param(prepared, "ray", key, value)
    err = one_line_error(runyard_cli("train", "digits_cnn", cwd=prepared))
    assert expected in err
    assert run_count(prepared) == 0
    assert not (prepared / "models").exists()


def test_search_trials_too_big_for_the_machine(prepared):
    """A trial that needs more CPUs than this machine has: refused before Ray starts."""
    pipe = prepared / "pipelines" / "mnist1d_cnn_search.yaml"
    spec = yaml.safe_load(pipe.read_text())
    spec["search"]["workers_per_trial"] = 64
    pipe.write_text(yaml.safe_dump(spec, sort_keys=False))
    err = one_line_error(runyard_cli("tune", "mnist1d_cnn_search", cwd=prepared))
    assert "search.workers_per_trial: ray.num_workers: 64 worker(s) need 64 CPU in all" in err, err
    assert run_count(prepared) == 0
