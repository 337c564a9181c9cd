"""A classical (scikit-learn) experiment through the real CLI on the real sqlite MLflow store:
train, evaluate and register, tracked exactly like a deep one; a failed fit leaves nothing behind.

One test on one store: each `runyard` process costs seconds of imports, the fits milliseconds."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import numpy as np
import pytest

from tests.conftest import runyard_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "digits_decision_tree"


def cli_ok(*args: str, cwd) -> str:
    result = runyard_cli(*args, cwd=cwd, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout


def test_train_evaluate_register_a_classical_model(prepared, capsys):
    import mlflow
    from mlflow import MlflowClient

    root = prepared
    assert "trained digits_decision_tree: MLflow run" in cli_ok("train", NAME, cwd=root)
    assert "test/acc=" in cli_ok("evaluate", NAME, cwd=root)
    assert f"registered {NAME} v1 (val/acc=" in cli_ok("register", NAME, cwd=root)

    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"

    # Params: the model as fitted (defaults included), as deep runs log theirs; no recipe.
    params = run.data.params
    assert params["model.name"] == "decision_tree" and params["model.criterion"] == "entropy"
    assert params["model.ccp_alpha"] == "0.0" and params["seed"] == "0" and params["dataset"] == "digits"
    assert not any(k.startswith("recipe") for k in params)
    # Metrics: validation accuracy for registration, then the evaluate stage's test metrics.
    metrics = run.data.metrics
    assert metrics["val/acc"] > 0.7 and metrics["train/acc"] > metrics["val/acc"] - 0.01
    test_metrics = json.loads((root / "metrics" / f"{NAME}.json").read_text())
    assert test_metrics["test/acc"] > 0.7
    assert all(metrics[k] == pytest.approx(v) for k, v in test_metrics.items())
    assert (root / "plots" / NAME / "confusion.png").is_file()

    # Lineage: the deep runs' tags.
    tags = run.data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert tags["runyard.git.commit"] == head and tags["runyard.git.dirty"] in ("true", "false")
    assert "runyard.data.digits.md5" in tags and len(tags["runyard.config.digest"]) == 16
    assert tags["runyard.ray.address"].startswith("none")
    assert tags["runyard.version.scikit-learn"] and tags["runyard.version.mlflow"]

    # The sklearn flavour (skops format), with a signature, loadable as a pyfunc.
    record = json.loads((root / "models" / NAME / "run.json").read_text())
    assert record["run_id"] == run_id and record["family"] == "classical"
    assert (root / "models" / NAME / "model.skops").is_file()
    logged = mlflow.models.get_model_info(record["model_uri"])
    assert set(logged.flavors) >= {"sklearn", "python_function"}
    assert logged.flavors["sklearn"]["serialization_format"] == "skops"
    assert tuple(logged.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 64)

    # Registered, champion, and the champion predicts what the evaluate stage measured.
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == "1" and champion.run_id == run_id
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    x_test = np.load(root / "data" / "digits" / "x_test.npy")
    y_test = np.load(root / "data" / "digits" / "y_test.npy")
    pred = pyfunc.predict(x_test.reshape(len(x_test), -1))
    assert (pred == y_test).mean() == pytest.approx(test_metrics["test/acc"])

    # `runyard list` shows it like the others.
    from runyard.commands.report import experiments_table
    from runyard.project import Project

    experiments_table(Project(root))
    row = next(line for line in capsys.readouterr().out.splitlines() if f" {NAME} " in line)
    assert "digits" in row and "decision_tree" in row and f"acc {test_metrics['test/acc']:.4f}" in row

    # A fit that fails (SVC refuses NaN inputs) ends its run FAILED and writes no model.
    from runyard.commands.train import train

    x = np.load(root / "data/digits/x_train.npy")
    x[3, 0, 2, 2] = np.nan
    np.save(root / "data/digits/x_train.npy", x)
    with pytest.raises(ValueError, match="NaN"):
        train(Project(root), "digits_svm_rbf")
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as con:
        assert sorted(r[0] for r in con.execute("select status from runs")) == ["FAILED", "FINISHED"]
    assert not (root / "models" / "digits_svm_rbf").exists()
    assert sorted(p.name for p in (root / "models").iterdir()) == [NAME]
