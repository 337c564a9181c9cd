"""The real `dvc repro` on a tiny configuration, in a throwaway copy of the project.

Real DVC CLI, real local Ray (Ray Train workers), real MLflow sqlite store.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import runyard_cli
from tests.integration.test_tune import assert_nested_search

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# One training and one search: enough for every stage kind; each stage is a process with its own Ray.
TINY = {"mnist1d_mlp": "mnist1d"}
SEARCH, SEARCH_TRIALS, SEARCH_EPOCHS = "mnist1d_cnn_search", 4, 3  # TPE + ASHA, 2 trials at once


def env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([Path(sys.executable).parent / "dvc", *args], cwd=cwd,
                            capture_output=True, text=True, env=env(), timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def make_tiny(root: Path) -> None:
    def params(p):
        p["experiments"] = TINY
        p["searches"] = {SEARCH: "mnist1d"}
        p["datasets"] = {"mnist1d": {"num_samples": 1000, "val_samples": 200}}

    edit(root / "params.yaml", params)
    edit(root / "pipelines/mnist1d_mlp.yaml",
         lambda p: p["recipe"].update(steps=None, epochs=3) or p["recipe"].pop("steps"))
    edit(root / f"pipelines/{SEARCH}.yaml", lambda p: (
        p["recipe"].update(epochs=SEARCH_EPOCHS),
        p["search"].update(num_samples=SEARCH_TRIALS, grace_period=1, reduction_factor=2)))
    # The paper's table reads experiments this tiny pipeline does not train.
    edit(root / "dvc.yaml", lambda d: d["stages"].pop("paper"))
    for f in ("params.yaml", "pipelines", "dvc.yaml"):
        subprocess.run(["git", "add", f], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid",
                    "commit", "-qm", "tiny"], cwd=root, check=True)


def client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def runs_of(c, name: str):
    exp = c.get_experiment_by_name(name)
    return [] if exp is None else c.search_runs([exp.experiment_id])


def test_dvc_repro_trains_tracks_registers_and_is_incremental(project_dir):
    root = project_dir
    make_tiny(root)
    first = dvc("repro", cwd=root)
    for name in TINY:
        assert f"Running stage 'train@{name}'" in first.stdout
    assert f"Running stage 'tune@{SEARCH}'" in first.stdout
    assert "database is locked" not in first.stdout + first.stderr
    # The first stage started the local Ray and the warm trainer beside the command server.
    assert "local Ray and warm trainer ready" in (root / ".runyard" / "warm-up.log").read_text()

    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    c = client(root)
    for name, dataset in TINY.items():
        (run,) = runs_of(c, name)
        assert run.info.status == "FINISHED"
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")]
        assert steps == [0, 1, 2], "one point per epoch, none duplicated"
        assert "val/loss" in run.data.metrics
        assert set(run.data.metrics) >= {"test/acc", "test/f1", "test/precision", "test/recall", "test/specificity"}
        tags = run.data.tags
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True).stdout.strip()
        assert tags["runyard.git.commit"] == head
        assert tags["runyard.git.dirty"] in ("true", "false")
        data_md5 = lock[f"prepare@{dataset}"]["outs"][0]["md5"]
        assert tags[f"runyard.data.{dataset}.md5"] == data_md5
        assert len(tags["runyard.config.digest"]) == 16
        assert tags["runyard.version.torch"] and tags["runyard.version.ray"]
        assert run.data.params["recipe.epochs"] == "3"
        champion = c.get_model_version_by_alias(name, "champion")
        assert champion.run_id == run.info.run_id
        assert (root / "metrics" / f"{name}.json").is_file()
        artifacts = {a.path for a in c.list_artifacts(run.info.run_id, "evaluation")}
        assert "evaluation/learning_curve.png" in artifacts

    again = dvc("repro", cwd=root)
    assert "Running stage" not in again.stdout
    assert all(len(runs_of(c, n)) == 1 for n in TINY)

    # What DVC would run after a change (a dry run: running it again proves nothing new).
    edit(root / "pipelines/mnist1d_mlp.yaml", lambda p: p["recipe"].update(lr=0.005))
    third = dvc("repro", "--dry", cwd=root)
    assert "Running stage 'train@mnist1d_mlp'" in third.stdout
    assert f"Running stage 'tune@{SEARCH}'" not in third.stdout, "only what changed runs again"
    assert "Running stage 'prepare@mnist1d'" not in third.stdout

    shown = dvc("metrics", "show", cwd=root).stdout
    assert "test/acc" in shown
    assert f"metrics/tune/{SEARCH}.json" in shown and "best_value" in shown
    assert_nested_search(root, SEARCH, SEARCH_TRIALS, SEARCH_EPOCHS)
    (parent,) = [r for r in runs_of(c, SEARCH) if r.data.tags.get("runyard.kind") == "search"]
    assert parent.data.tags["runyard.git.commit"] == head
    assert_sweep(c, root, parent, [r for r in runs_of(c, SEARCH) if r.info.run_id != parent.info.run_id])

    # A fresh clone has no DVC cache and no models/: its search runs again (the best model
    # is the tune stage's out), although git holds the search's metrics/tune/ file.
    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(root / "models" / SEARCH)
    assert f"Running stage 'tune@{SEARCH}'" in dvc("repro", "--dry", cwd=root).stdout


def assert_sweep(c, root: Path, parent, children) -> None:
    """A search ends with a sweep: every trial's model scored on its training split,
    validation and test, as a table and figures in plots/ and on the parent, and on each child."""
    out = root / "plots" / "tune" / SEARCH
    rows = {r["trial_id"]: r for r in csv.DictReader((out / "sweep.csv").open())}
    assert len(rows) == SEARCH_TRIALS
    for child in children:
        row = rows[child.data.tags["runyard.trial_id"]]
        assert row["outcome"] == child.data.tags["runyard.trial.outcome"]
        assert child.data.metrics["sweep/train_acc"] == pytest.approx(float(row["train/acc"]))
        assert child.data.metrics["test/acc"] == pytest.approx(float(row["test/acc"]))
    figures = sorted(p.name for p in out.glob("sweep*.png"))  # trials.png: the search's own figure (search/)
    assert figures and all((out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    logged = {a.path for a in c.list_artifacts(parent.info.run_id, "sweep")}
    assert logged == {f"sweep/{name}" for name in ["sweep.csv", *figures]}


def _run_status(root: Path) -> list[str]:
    db = root / "mlruns" / "mlflow.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as con:
            return [r[0] for r in con.execute("select status from runs")]
    except sqlite3.OperationalError:  # tables not created yet
        return []


def test_failed_training_ends_run_failed_and_writes_nothing(prepared):
    import numpy as np

    # A real failure inside the Ray worker: more targets than inputs, so a batch indexes
    # past the inputs. (Inputs of the wrong shape are refused before any run exists.)
    y = np.load(prepared / "data/regression1d/y_train.npy")
    np.save(prepared / "data/regression1d/y_train.npy", np.concatenate([y, y]))
    result = runyard_cli("train", "regression1d_shallow", cwd=prepared)
    assert result.returncode != 0
    assert _run_status(prepared) == ["FAILED"]
    assert not (prepared / "models").exists()


def test_sigterm_ends_run_killed_not_running(prepared):
    edit(prepared / "pipelines/regression1d_shallow.yaml",
         lambda p: p["recipe"].update(epochs=100000))
    proc = subprocess.Popen([sys.executable, "-m", "runyard", "train", "regression1d_shallow"],
                            cwd=prepared, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while _run_status(prepared) != ["RUNNING"]:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "run never started"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode == 143, "128 + SIGTERM, as a process killed by it"
    assert _run_status(prepared) in (["KILLED"], ["FAILED"])
    assert not (prepared / "models").exists()
