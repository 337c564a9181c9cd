"""Model registry against a real MLflow sqlite store: the champion alias moves only on improvement."""

from __future__ import annotations

import itertools

import mlflow
import mlflow.pytorch
import numpy as np
import pytest

from runyard.tracking.registry import Registration, beats, register

ALIAS = "champion"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real sqlite tracking + registry store, shared by this module's tests.

    Every test registers under its own model name, so tests stay independent.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        # Restore MLflow's process-wide URIs (and the env vars it exports) afterwards.
        mp.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
        mp.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_REGISTRY_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        client = mlflow.MlflowClient(uri, registry_uri=uri)
        exp_id = client.create_experiment("registry-tests", artifact_location=str(root / "artifacts"))
        yield client, uri, exp_id
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A real MLflow pytorch model directory, saved once and logged into each run."""
    import torch

    path = tmp_path_factory.mktemp("tiny") / "model"
    mlflow.pytorch.save_model(torch.nn.Linear(2, 1), path, serialization_format="pickle",
                              pip_requirements=["torch"])
    assert (path / "MLmodel").is_file()
    return path


@pytest.fixture
def make_run(store, tiny_model_dir):
    """Create a run with the given metrics (``val_acc`` -> ``val/acc``) and a model artifact."""
    client, _, exp_id = store

    def make(**metrics: float | list[float]) -> tuple[str, str]:
        run_id = client.create_run(exp_id).info.run_id
        for key, value in metrics.items():
            for step, v in enumerate(value if isinstance(value, list) else [value]):
                client.log_metric(run_id, key.replace("_", "/"), v, step=step)
        client.log_artifacts(run_id, str(tiny_model_dir), "model")
        client.set_terminated(run_id)
        return run_id, f"runs:/{run_id}/model"

    return make


_names = itertools.count()


@pytest.fixture
def name():
    return f"exp{next(_names)}"


def champion(client, name: str, alias: str = ALIAS) -> str:
    return str(client.get_model_version_by_alias(name, alias).version)


def reg(client, name, run, metric="val/acc", mode="max", alias=ALIAS) -> Registration:
    run_id, model_uri = run
    return register(client, name, model_uri, run_id, metric, mode, alias)


def test_first_registration_becomes_champion(store, make_run, name):
    client = store[0]
    run = make_run(val_acc=0.61)
    r = reg(client, name, run)
    assert r == Registration(name, "1", "val/acc", pytest.approx(0.61), "1", True)
    assert r.as_dict()["promoted"] is True
    assert champion(client, name) == "1"
    mv = client.get_model_version(name, "1")
    assert mv.run_id == run[0]
    assert mv.source.endswith("/model")
    assert float(mv.tags["val/acc"]) == pytest.approx(0.61)
    assert name in client.get_registered_model(name).description


def test_registers_a_model_logged_by_mlflow_pytorch(store, name, monkeypatch):
    """The source the train stage passes: ``log_model``'s ``models:/`` URI."""
    import torch

    client, uri, exp_id = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # conftest's autouse fixture removed it
    run_id = client.create_run(exp_id).info.run_id
    client.log_metric(run_id, "val/acc", 0.42)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            torch.nn.Linear(2, 1), name="model", input_example=np.zeros((1, 2), np.float32),
            pip_requirements=["torch"],
        )
    r = register(client, name, info.model_uri, run_id, "val/acc", "max", ALIAS)
    assert (r.version, r.champion_version, r.promoted) == ("1", "1", True)
    mv = client.get_model_version_by_alias(name, ALIAS)
    assert (mv.run_id, mv.source) == (run_id, info.model_uri)
    loaded = mlflow.pytorch.load_model(f"models:/{name}@{ALIAS}")
    assert isinstance(loaded, torch.nn.Module)


def test_worse_run_gets_a_version_but_alias_stays(store, make_run, name):
    client = store[0]
    reg(client, name, make_run(val_acc=0.8))
    worse = make_run(val_acc=0.7)
    r = reg(client, name, worse)
    assert (r.version, r.champion_version, r.promoted) == ("2", "1", False)
    assert champion(client, name) == "1"
    assert client.get_model_version(name, "2").run_id == worse[0]


def test_better_run_moves_the_alias(store, make_run, name):
    client = store[0]
    reg(client, name, make_run(val_acc=0.8))
    reg(client, name, make_run(val_acc=0.7))
    r = reg(client, name, make_run(val_acc=0.9))
    assert (r.version, r.champion_version, r.promoted) == ("3", "3", True)
    assert champion(client, name) == "3"
    # The alias is compared with the current champion (0.9), not the previous version (0.7).
    r = reg(client, name, make_run(val_acc=0.85))
    assert (r.version, r.champion_version, r.promoted) == ("4", "3", False)
    assert champion(client, name) == "3"


@pytest.mark.parametrize(
    "mode,values,champions",
    [
        ("max", [0.5, 0.3, 0.7, 0.6], ["1", "1", "3", "3"]),
        ("min", [0.5, 0.3, 0.7, 0.6], ["1", "2", "2", "2"]),
        ("min", [0.5, 0.9, 0.1, 0.2], ["1", "1", "3", "3"]),
    ],
)
def test_mode_decides_better(store, make_run, name, mode, values, champions):
    client = store[0]
    got = [reg(client, name, make_run(val_loss=v), metric="val/loss", mode=mode).champion_version
           for v in values]
    assert got == champions
    assert champion(client, name) == champions[-1]


def test_registering_the_same_run_twice_is_idempotent(store, make_run, name):
    client = store[0]
    run = make_run(val_acc=0.5)
    first = reg(client, name, run)
    second = reg(client, name, run)
    assert first.version == second.version == "1"
    assert second.champion_version == "1" and second.promoted is False
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    # Also for a run that is not the champion: no new version, alias untouched.
    worse = make_run(val_acc=0.4)
    assert reg(client, name, worse).version == "2"
    again = reg(client, name, worse)
    assert (again.version, again.champion_version, again.promoted) == ("2", "1", False)
    assert len(client.search_model_versions(f"name='{name}'")) == 2
    assert champion(client, name) == "1"


def test_tie_does_not_move_the_alias(store, make_run, name):
    client = store[0]
    reg(client, name, make_run(val_acc=0.75))
    r = reg(client, name, make_run(val_acc=0.75))
    assert (r.version, r.champion_version, r.promoted) == ("2", "1", False)
    assert champion(client, name) == "1"


def test_champion_run_re_registered_after_others_is_not_promoted_again(store, make_run, name):
    client = store[0]
    best = make_run(val_acc=0.9)
    reg(client, name, best)
    reg(client, name, make_run(val_acc=0.1))
    r = reg(client, name, best)
    assert (r.version, r.champion_version, r.promoted) == ("1", "1", False)
    assert champion(client, name) == "1"


def test_old_registered_run_can_win_back_if_better_than_current(store, make_run, name):
    client = store[0]
    run_a = make_run(val_acc=0.5)
    reg(client, name, run_a)
    client.set_registered_model_alias(name, ALIAS, reg(client, name, make_run(val_acc=0.4)).version)
    r = reg(client, name, run_a)  # run_a (0.5) beats the manually set champion (0.4)
    assert (r.version, r.champion_version, r.promoted) == ("1", "1", True)
    assert champion(client, name) == "1"


def test_custom_alias_and_latest_metric_value(store, make_run, name):
    client = store[0]
    r = reg(client, name, make_run(val_acc=[0.2, 0.9, 0.6]), alias="best")
    assert r.value == pytest.approx(0.6)  # the last epoch's value: the saved weights are the last
    assert champion(client, name, "best") == "1"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(name, ALIAS)


def test_separate_experiments_have_separate_champions(store, make_run, name):
    client = store[0]
    run = make_run(val_acc=0.3)
    reg(client, name, make_run(val_acc=0.9))
    r = reg(client, f"{name}-other", run)
    assert (r.version, r.promoted) == ("1", True)
    assert champion(client, name) == "1"


@pytest.mark.parametrize(
    "value,incumbent,mode,expected",
    [(0.9, 0.8, "max", True), (0.8, 0.9, "max", False), (0.8, 0.8, "max", False),
     (0.1, 0.2, "min", True), (0.3, 0.2, "min", False), (0.2, 0.2, "min", False)],
)
def test_beats(value, incumbent, mode, expected):
    assert beats(value, incumbent, mode) is expected


def test_changed_optimized_metric_replaces_a_champion_without_it(store, make_run, name):
    client, _, _ = store
    old_id, old_uri = make_run(val_acc=0.9)
    register(client, name, old_uri, old_id, "val/acc", "max", ALIAS)
    new_id, new_uri = make_run(val_acc=0.5, val_loss=0.7)
    reg = register(client, name, new_uri, new_id, "val/loss", "min", ALIAS)
    assert reg.promoted and champion(client, name) == reg.version


def test_run_without_the_metric_is_an_error_and_registers_nothing(store, make_run, name):
    from runyard.errors import RunyardError

    client, _, _ = store
    run_id, uri = make_run(val_acc=0.9)
    with pytest.raises(RunyardError, match="has no metric 'val/f1'"):
        register(client, name, uri, run_id, "val/f1", "max", ALIAS)
    assert not client.search_model_versions(f"name='{name}'")
