"""Fault tolerance with real processes: a killed Ray worker, a killed driver.

One MLflow run per training survives both, ends FINISHED, and holds every epoch
exactly once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import runyard_cli
from tests.services import kill

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCHS = 40


def configure(root: Path, **ray) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ray"].update(ray)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    pipe = root / "pipelines/regression1d_shallow.yaml"
    p = yaml.safe_load(pipe.read_text())
    p["recipe"]["epochs"] = EPOCHS
    p["model"]["width"] = 64
    pipe.write_text(yaml.safe_dump(p, sort_keys=False))


def client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def all_runs(root: Path):
    if not (root / "mlruns" / "mlflow.db").exists():
        return []
    c = client(root)
    exp = c.get_experiment_by_name("regression1d_shallow")
    return [] if exp is None else c.search_runs([exp.experiment_id])


def logged_epochs(root: Path) -> list[int]:
    """Epochs in the store, read with plain sqlite: a MlflowClient would race the
    training process to create the tables while the store is still new."""
    db = root / "mlruns" / "mlflow.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as con:
            return [r[0] for r in con.execute("select step from metrics where key = 'train/loss'")]
    except sqlite3.OperationalError:  # tables not created yet
        return []


def wait_for_epoch(root: Path, epoch: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while max(logged_epochs(root), default=-1) < epoch:
        assert proc.poll() is None, f"training ended early:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.5)


def start_training(root: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runyard", "train", "regression1d_shallow", *extra], cwd=root,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own session: the test can kill just this driver and its Ray
    )


def train_worker_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def assert_one_complete_run(root: Path) -> None:
    (run,) = all_runs(root)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client(root).get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(EPOCHS)), "every epoch exactly once"
    assert (root / "models" / "regression1d_shallow" / "model.pt").is_file()


def test_killed_worker_resumes_from_checkpoint(prepared):
    configure(prepared, max_failures=2, checkpoint_every=2)
    proc = start_training(prepared)
    wait_for_epoch(prepared, 5, proc)
    pids = train_worker_pids()
    assert pids, "no Ray Train worker process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "runyard: resuming from the checkpoint after epoch" in out
    assert_one_complete_run(prepared)


def test_resume_after_killed_driver(prepared):
    configure(prepared, checkpoint_every=2)
    proc = start_training(prepared)
    wait_for_epoch(prepared, 7, proc)
    kill(proc)  # the driver, its local Ray and its workers: the run stays RUNNING
    (run,) = all_runs(prepared)
    assert run.info.status == "RUNNING"
    first_run_id = run.info.run_id

    result = runyard_cli("train", "regression1d_shallow", "--resume", cwd=prepared, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert first_run_id in result.stdout
    assert "runyard: resuming from the checkpoint after epoch" in result.stdout + result.stderr
    assert_one_complete_run(prepared)


def test_resume_with_nothing_to_resume_is_an_error(prepared):
    result = runyard_cli("train", "regression1d_shallow", "--resume", cwd=prepared)
    assert result.returncode == 2
    assert "--resume: no interrupted run" in result.stderr
