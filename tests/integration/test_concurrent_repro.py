"""Two `dvc repro` of different experiments started at once in one checkout.

Real DVC CLI, two real `runyard` processes each with its own local Ray, one shared
MLflow sqlite store and Optuna sqlite study store. The promise: DVC's lock refuses the
second in one line, or both finish; either way dvc.lock records both once they are
done, the sqlite stores pass `PRAGMA integrity_check`, and no run is left RUNNING.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN, SEARCH, TRIALS = "regression1d_shallow", "tiny_search", 2
STAGES = (f"train@{TRAIN}", f"tune@{SEARCH}")


def env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def dvc(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([Path(sys.executable).parent / "dvc", *args], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def make_tiny(root: Path) -> None:
    """One training on regression1d and one search on mnist1d: no stage in common."""
    def params(p):
        p["experiments"] = {TRAIN: "regression1d"}
        p["searches"] = {SEARCH: "mnist1d"}
        p["datasets"] = {"mnist1d": {"num_samples": 1000, "val_samples": 200}, "regression1d": {}}

    edit(root / "params.yaml", params)
    edit(root / "pipelines" / f"{TRAIN}.yaml", lambda p: (p["recipe"].update(epochs=4), p["model"].update(width=64)))
    (root / "pipelines" / f"{SEARCH}.yaml").write_text(yaml.safe_dump({
        "dataset": "mnist1d",
        "model": {"name": "mlp", "hidden": [16]},
        "recipe": {"optimizer": "adam", "lr": 0.01, "batch_size": 200, "epochs": 2},
        "optimized_metric": "val/acc",
        "search": {"algorithm": "tpe", "scheduler": "fifo", "num_samples": TRIALS, "max_concurrent": 1,
                   "space": {"recipe.lr": {"loguniform": [0.001, 0.05]}}},
    }))
    edit(root / "dvc.yaml", lambda d: d["stages"].pop("paper"))
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qm", "tiny"],
                   cwd=root, check=True)


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as con:
        return con.execute("pragma integrity_check").fetchone()[0]


def test_two_repros_at_once_lock_or_both_finish_and_leave_stores_sound(project_dir):
    """On a new store (a fresh clone): both processes would create it; one does, under a lock."""
    root = project_dir
    make_tiny(root)
    assert not (root / "mlruns" / "mlflow.db").exists()
    procs = {stage: dvc("repro", stage, cwd=root) for stage in STAGES}
    outcome = {stage: (p.wait(timeout=600), *p.communicate()) for stage, p in procs.items()}

    refused = []
    for stage, (code, out, err) in outcome.items():
        if code == 0:
            continue
        errors = [ln for ln in err.splitlines() if ln.startswith("ERROR")]
        assert len(errors) == 1 and "Unable to acquire lock" in errors[0], \
            f"{stage} failed other than on DVC's lock:\n{(out + err)[-4000:]}"
        refused.append(stage)
    assert len(refused) < 2, "both refused: neither holds the lock"
    for stage in refused:  # refused, not broken: it runs once the other is done
        again = dvc("repro", stage, cwd=root)
        out, err = again.communicate(timeout=600)
        assert again.returncode == 0, (out + err)[-4000:]

    # dvc.lock records both (no update lost to the other process): nothing to reproduce.
    status = dvc("status", *STAGES, cwd=root)
    out, err = status.communicate(timeout=120)
    assert status.returncode == 0 and "up to date" in out, out + err
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(STAGES) <= lock.keys()

    mlflow_db, optuna_db = root / "mlruns" / "mlflow.db", root / "mlruns" / "optuna.db"
    assert integrity(mlflow_db) == "ok" and integrity(optuna_db) == "ok"
    with sqlite3.connect(mlflow_db) as con:
        statuses = con.execute("select status, count(*) from runs group by status").fetchall()
        by_exp = dict(con.execute(
            "select e.name, count(*) from runs r join experiments e on r.experiment_id = e.experiment_id "
            "where r.status = 'FINISHED' and r.lifecycle_stage = 'active' group by e.name").fetchall())
    assert dict(statuses).keys() == {"FINISHED"}, statuses
    with sqlite3.connect(mlflow_db) as con:
        leftovers = con.execute("select name from sqlite_master where name like '_alembic_tmp%'").fetchall()
    assert not leftovers, f"a half-done schema migration: {leftovers}"
    assert by_exp == {TRAIN: 1, SEARCH: 1 + TRIALS}, by_exp
    with sqlite3.connect(optuna_db) as con:
        states = dict(con.execute("select state, count(*) from trials group by state").fetchall())
    assert states == {"COMPLETE": TRIALS}, states
