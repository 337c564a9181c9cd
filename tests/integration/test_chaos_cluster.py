"""Chaos on a real 3-node cluster: a worker node killed while a search's trials run.

The search runs as a Ray job (`runyard submit`), its driver on the head node. Once a
trial is training on a worker node, that node's raylet, object store and workers are
SIGKILLed together, as a lost machine would be. The promise: every trial still ends
(completed or pruned, none errored; the killed trial continues from its last epoch's
checkpoint on a surviving node), one MLflow child run per trial with each epoch once,
and the search's best model registered.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import copy_project, require_ray_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "chaos_search"
TRIALS, EPOCHS = 4, 10


def write_search(root: Path) -> None:
    # Epochs of about a second on a busy machine: long enough that a kill finds a trial
    # training, short enough for the whole search to take a minute or two.
    (root / "pipelines" / f"{NAME}.yaml").write_text(yaml.safe_dump({
        "dataset": "mnist1d",
        "model": {"name": "mlp", "hidden": [128, 128]},
        "recipe": {"optimizer": "adam", "lr": 0.01, "batch_size": 16, "epochs": EPOCHS},
        "optimized_metric": "val/acc",
        "search": {
            "algorithm": "tpe", "scheduler": "asha", "num_samples": TRIALS, "max_concurrent": 2,
            "grace_period": 3, "reduction_factor": 2, "max_failures": 2,
            "space": {"recipe.lr": {"loguniform": [0.001, 0.05]}},
        },
    }))
    # A trial checkpoint every epoch (else only at ASHA's rungs and the end): the killed
    # trial continues from its last epoch.
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("checkpoint_every: 0", "checkpoint_every: 1"))
    assert "checkpoint_every: 1" in params.read_text()


def epochs_logged(db: Path) -> dict[str, int]:
    """Child run id -> epochs logged so far (plain sqlite: the job may still be creating the store)."""
    try:
        with sqlite3.connect(db) as con:
            rows = con.execute(
                "select r.run_uuid, count(distinct m.step) from runs r "
                "join tags t on r.run_uuid = t.run_uuid and t.key = 'mlflow.parentRunId' "
                "left join metrics m on m.run_uuid = r.run_uuid and m.key = 'val/acc' "
                "where r.status = 'RUNNING' group by r.run_uuid").fetchall()
    except sqlite3.OperationalError:
        return {}
    return dict(rows)


def trial_processes(state: dict, node: dict) -> list:
    from runyard.execution import cluster

    found = []
    for p in cluster._processes(state, [node]):
        try:
            if "ImplicitFunc" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_worker_node_killed_mid_search(tmp_path):
    from mlflow import MlflowClient

    from runyard.execution import cluster

    require_ray_cli()
    root = copy_project(tmp_path / "project")
    write_search(root)
    state_dir = root / ".runyard"
    state = cluster.up(nodes=3, cpus_per_node=1, state_dir=state_dir, timeout_s=300)
    job = None
    try:
        # `runyard submit` hands the job the project's tracking and study stores.
        command = f"{sys.executable} -m runyard prepare mnist1d && {sys.executable} -m runyard tune {NAME}"
        job = subprocess.Popen([sys.executable, "-m", "runyard", "submit", "--", "sh", "-c", command], cwd=root,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        db = root / "mlruns" / "mlflow.db"
        workers = [n for n in state["nodes"] if not n["head"]]
        deadline = time.monotonic() + 400
        victim = None
        # Kill a worker node as soon as a trial on it has a checkpoint (an epoch logged) and
        # more epochs to go.
        while victim is None:
            assert job.poll() is None, f"the search ended early:\n{job.stdout.read()[-4000:]}"
            assert time.monotonic() < deadline, "no trial ran on a worker node"
            if any(1 <= n <= EPOCHS - 4 for n in epochs_logged(db).values()):
                victim = next((n for n in workers if trial_processes(state, n)), None)
            time.sleep(0.2)
        doomed = cluster._processes(state, [victim])
        for p in doomed:
            with contextlib.suppress(psutil.Error):
                p.kill()
        gone, alive = psutil.wait_procs(doomed, timeout=30)
        assert not alive, f"node {victim['index']} processes survived SIGKILL: {alive}"

        out, _ = job.communicate(timeout=500)
        assert job.returncode == 0, out[-5000:]
        # Tune's record of the failure, in the job's copy of the project (on the head node):
        # the trial on the killed node failed, once, and was continued rather than errored.
        failures = [f.read_text() for f in Path(state["temp_root"]).rglob(f"{NAME}-search-*/*/error.txt")]
        assert len(failures) == 1 and "Failure # 1" in failures[0], failures
    finally:
        if job is not None and job.poll() is None:
            job.kill()
        cluster.down(state_dir)

    client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("runyard.kind") == "search"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "FINISHED"
    assert len(children) == TRIALS, "one child run per trial, no duplicate for the restarted trial"
    assert len({c.data.tags["runyard.trial_id"] for c in children}) == TRIALS
    outcomes = [(c.info.status, c.data.tags.get("runyard.trial.outcome")) for c in children]
    assert all(s == "FINISHED" and o in ("completed", "pruned") for s, o in outcomes), outcomes
    assert parent.data.metrics["search/errored"] == 0 and parent.data.metrics["search/trials"] == TRIALS
    full = []
    for c in children:
        logged = sorted(m.step for m in client.get_metric_history(c.info.run_id, "val/acc"))
        assert logged == list(range(len(logged))), f"every epoch once, none lost or repeated: {logged}"
        if c.data.tags["runyard.trial.outcome"] == "completed":
            assert len(logged) == EPOCHS
            full.append(c.data.metrics["val/acc"])
    assert parent.data.metrics["val/acc"] == pytest.approx(max(full))
    assert client.get_model_version_by_alias(NAME, "champion").run_id == parent.info.run_id
    assert "search: 4/4 trials done" in out
