"""Searches against real Ray Tune, Optuna and an MLflow sqlite store.

A killed search resumes without running a finished trial again. The shape of a
finished search (one parent, one ended child per trial, each epoch once even with
concurrent trials) is checked by ``assert_nested_search``, which the DVC pipeline
test applies to its ``tune@`` stage. Data-parallel trials (a Ray Train run each) keep
that shape and checkpoint only where their scheduler may stop them, and so does a
search over a user's own LightningModule.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray.tune.experiment.trial import _TrainingRunMetadata

from tests.conftest import runyard_cli
from tests.services import kill, kill_local_ray

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "tiny_search"


def write_search(root: Path, num_samples: int, epochs: int, grace_period: int = 2) -> None:
    (root / "pipelines" / f"{NAME}.yaml").write_text(yaml.safe_dump({
        "dataset": "mnist1d",
        "model": {"name": "mlp", "hidden": [32]},
        "recipe": {"optimizer": "adam", "lr": 0.01, "batch_size": 200, "epochs": epochs},
        "optimized_metric": "val/acc",
        "search": {
            "algorithm": "tpe", "scheduler": "asha", "num_samples": num_samples, "max_concurrent": 2,
            "grace_period": grace_period, "reduction_factor": 2,
            "space": {"recipe.lr": {"loguniform": [0.001, 0.05]}, "model.hidden": {"choice": [[16], [32], [64]]}},
        },
    }))


def client_at(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def client(root: Path):
    return client_at(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def search_runs(root: Path, name: str = NAME):
    """(parents, children) of the search experiment."""
    c = client(root)
    exp = c.get_experiment_by_name(name)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("runyard.kind") == "search"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def steps(root: Path, run_id: str, key: str = "val/acc") -> list[int]:
    return sorted(m.step for m in client(root).get_metric_history(run_id, key))


def assert_nested_search(root: Path, name: str, num_samples: int, epochs: int) -> None:
    """One FINISHED parent, exactly one ended child per trial with each epoch once, the
    best child's metric on the parent, the parent's model registered as champion."""
    (parent,), children = search_runs(root, name)
    assert parent.info.status == "FINISHED"
    assert len(children) == num_samples
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["runyard.trial.outcome"] for c in children} <= {"completed", "pruned"}
    full = []
    for c in children:
        logged = steps(root, c.info.run_id)
        assert logged == list(range(len(logged))), "every reported epoch once, none lost"
        if c.data.tags["runyard.trial.outcome"] == "completed":
            assert len(logged) == epochs
        if len(logged) == epochs:
            full.append(c.data.metrics["val/acc"])
    assert parent.data.metrics["val/acc"] == pytest.approx(max(full))
    assert "test/acc" in parent.data.metrics and any(k.startswith("best.") for k in parent.data.params)
    assert client(root).get_model_version_by_alias(name, "champion").run_id == parent.info.run_id
    summary = json.loads((root / "metrics" / "tune" / f"{name}.json").read_text())
    assert summary["best_value"] == pytest.approx(max(full)) and summary["trials"] == num_samples
    # models/<name>/: the best trial's model, the tune stage's DVC out
    record = json.loads((root / "models" / name / "run.json").read_text())
    assert record["run_id"] == parent.info.run_id and (root / "models" / name / "model.pt").is_file()
    best_model = {k.removeprefix("best.model."): yaml.safe_load(v) for k, v in parent.data.params.items()
                  if k.startswith("best.model.")}
    assert best_model and all(record["model"][k] == v for k, v in best_model.items())


def finished_children(root: Path) -> int:
    """Read with plain sqlite: the search process may still be creating the store."""
    db = root / "mlruns" / "mlflow.db"
    try:
        with sqlite3.connect(db) as con:
            return con.execute(
                "select count(*) from runs r join tags t on r.run_uuid = t.run_uuid "
                "where t.key = 'mlflow.parentRunId' and r.status = 'FINISHED'"
            ).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def recorded_checkpoints(root: Path) -> dict[Path, str]:
    """Each trial's checkpoint in Tune's newest saved state of the search -> the trial's status."""
    states = sorted((root / ".runyard" / "ray").glob(f"{NAME}-search-*/experiment_state-*.json"))
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"]
    except (IndexError, OSError, json.JSONDecodeError):  # none yet, or being written
        return {}
    recorded = {}
    for trial_json, run_json in trial_data:
        trial = json.loads(trial_json)
        latest = _TrainingRunMetadata.from_json_state(run_json).checkpoint_manager.latest_checkpoint_result
        if latest is not None:
            recorded[states[-1].parent / trial["relative_logdir"] / Path(latest.checkpoint.path).name] = trial["status"]
    return recorded


def replace_with_newer(checkpoint: Path) -> None:
    """What a kill between a trial's next checkpoint and Tune's next state save leaves: the
    recorded checkpoint replaced by a newer one (Tune keeps one per trial)."""
    newer = checkpoint.with_name(f"checkpoint_{int(checkpoint.name.rsplit('_', 1)[1]) + 1:06d}")
    if checkpoint.exists() and not newer.exists():
        checkpoint.rename(newer)


def test_killed_search_resumes_without_rerunning_trials(prepared):
    # No pruning before epoch 6: the later trials run long enough for the kill to find one running.
    write_search(prepared, num_samples=4, epochs=12, grace_period=6)
    # A checkpoint every epoch (else only at the rung and the end): one to resume from mid-trial.
    params = prepared / "params.yaml"
    params.write_text(params.read_text().replace("checkpoint_every: 0", "checkpoint_every: 1"))
    assert "checkpoint_every: 1" in params.read_text()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runyard", "tune", NAME], cwd=prepared, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 400
    # Kill when Tune's state records finished trials and a running one with a checkpoint.
    while finished_children(prepared) < 2 or "RUNNING" not in recorded_checkpoints(prepared).values():
        assert proc.poll() is None, f"search ended early:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "search made no progress"
        time.sleep(0.1)
    kill(proc)  # the driver, its local Ray and the trials: no clean-up
    kill_local_ray(prepared)
    for checkpoint in recorded_checkpoints(prepared):
        replace_with_newer(checkpoint)
    (parent,), before = search_runs(prepared)
    assert parent.info.status == "RUNNING"
    done_before = {c.info.run_id: c.info.end_time for c in before if c.info.status == "FINISHED"}
    assert len(done_before) >= 2

    result = runyard_cli("tune", NAME, "--resume", cwd=prepared, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (after_parent,), children = search_runs(prepared)
    assert after_parent.info.run_id == parent.info.run_id and after_parent.info.status == "FINISHED"
    assert len(children) == 4, "one child per trial, no duplicates"
    assert all(c.info.status == "FINISHED" for c in children), [
        (c.info.status, c.data.tags.get("runyard.trial.outcome")) for c in children]
    for c in children:
        if c.info.run_id in done_before:
            assert c.info.end_time == done_before[c.info.run_id], "a finished trial ran again"
        logged = steps(prepared, c.info.run_id)
        assert logged == list(range(len(logged))), (
            f"trial {c.data.tags.get('runyard.trial_id')} (finished before the kill: "
            f"{c.info.run_id in done_before}) logged epochs {logged}")


def test_data_parallel_trials_log_each_epoch_once_and_checkpoint_only_at_the_rungs(prepared):
    """Trials of 2 workers each: a Ray Train run inside each trial, whose rank 0 reports to Tune."""
    write_search(prepared, num_samples=2, epochs=4, grace_period=2)
    pipe = prepared / "pipelines" / f"{NAME}.yaml"
    spec = yaml.safe_load(pipe.read_text())
    spec["search"].update(workers_per_trial=2, cpus_per_worker=1, max_concurrent=1)
    pipe.write_text(yaml.safe_dump(spec))
    result = runyard_cli("tune", NAME, cwd=prepared, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert_nested_search(prepared, NAME, num_samples=2, epochs=4)
    # A checkpoint at ASHA's rungs only, epochs 2 and 4 (the last), not one per epoch. A trial
    # ASHA stopped at the first rung reported 2 epochs.
    reports = sorted((prepared / ".runyard" / "ray").glob(f"{NAME}-search-*/run_trial_*/result.json"))
    assert len(reports) == 2, reports
    for trial in reports:
        results = [json.loads(line) for line in trial.read_text().splitlines()]
        epochs = [r["epoch"] for r in results]
        checkpointed = [r["epoch"] for r in results if "checkpoint_path" in r]
        assert epochs in ([0, 1], [0, 1, 2, 3]), trial.parent.name
        assert checkpointed == [e for e in (1, 3) if e in epochs], (trial.parent.name, checkpointed)


def test_a_search_over_a_users_lightning_module(project_dir):
    """The guide's ``WineLit`` (labnets/ beside pipelines/) on the user's wine CSV, its own
    ``hidden`` and ``lr`` searched: trials log what the module logs, the best is registered."""
    from tests.integration.test_own_data import WINE_FILES
    from tests.integration.test_own_model_cluster import add_wine_and_labnets

    root = project_dir
    add_wine_and_labnets(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["files"] = WINE_FILES
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "pipelines" / "wine_lit_search.yaml").write_text(yaml.safe_dump({
        "dataset": "wine",
        "model": {"name": "labnets.lit:WineLit", "hidden": 16, "lr": 0.01},
        "recipe": {"batch_size": 32, "epochs": 4},
        "optimized_metric": "val/acc",
        "search": {"algorithm": "tpe", "scheduler": "asha", "num_samples": 3, "max_concurrent": 2,
                   "grace_period": 2, "reduction_factor": 2,
                   "space": {"model.lr": {"loguniform": [0.003, 0.05]}, "model.hidden": {"choice": [8, 32]}}},
    }))
    prepared = runyard_cli("prepare", "wine", cwd=root, timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    result = runyard_cli("tune", "wine_lit_search", cwd=root, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert_nested_search(root, "wine_lit_search", num_samples=3, epochs=4)
    (parent,), children = search_runs(root, "wine_lit_search")
    for c in children:  # what WineLit logs, under the names it chose
        assert steps(root, c.info.run_id, "train/loss") == steps(root, c.info.run_id)
    assert float(parent.data.params["best.model.lr"]) in {float(c.data.params["model.lr"]) for c in children}


def test_resume_without_an_interrupted_search_is_an_error(prepared):
    write_search(prepared, num_samples=2, epochs=2)
    result = runyard_cli("tune", NAME, "--resume", cwd=prepared)
    assert result.returncode == 2
    assert "--resume: no interrupted search" in result.stderr


def test_a_child_whose_creation_was_cut_off_after_it_was_stored_is_not_created_twice(tmp_path,
                                                                                     cut_off_next_run_creation):
    """The server stored the trial's child run, then died before it answered: the retry
    finds that child by its trial tag rather than making a second one."""
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from runyard.tracking.client import RetryingClient
    from runyard.tuning.children import ChildRuns

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = client_at(uri)
    exp_id = c.create_experiment("s")
    parent = c.create_run(exp_id).info.run_id
    cut = cut_off_next_run_creation()
    children = ChildRuns(RetryingClient(MlflowClient(uri), retry_s=30), exp_id, parent, max_epochs=3)
    children.on_trial_start(0, [], SimpleNamespace(trial_id="t1", config={"recipe": {"lr": 0.1}}))
    assert [r.info.run_id for r in children.children()] == cut
    assert children.runs == {"t1": cut[0]}


def test_resumed_search_drops_children_of_trials_tune_forgot(tmp_path):
    """A trial started after Tune's last state save is unknown to the restored search,
    which runs a new trial instead: the forgotten child must not stay as an extra one."""
    from types import SimpleNamespace

    from runyard.tuning.children import TRIAL_TAG, ChildRuns

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = client_at(uri)
    exp_id = c.create_experiment("s")
    parent = c.create_run(exp_id).info.run_id
    for trial_id, status in (("kept", "FINISHED"), ("forgotten", "RUNNING")):
        run = c.create_run(exp_id, tags={"mlflow.parentRunId": parent, TRIAL_TAG: trial_id})
        if status == "FINISHED":
            c.set_terminated(run.info.run_id)
    children = ChildRuns(uri, exp_id, parent, max_epochs=3)
    children.on_step_begin(0, [SimpleNamespace(trial_id="kept")])
    children.on_step_begin(1, [])  # only the first step of a resumed search decides
    assert [r.data.tags[TRIAL_TAG] for r in children.children()] == ["kept"]
    assert children.runs.keys() == {"kept"}
