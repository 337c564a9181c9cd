"""The warm yard: the project's shared local Ray and its warm trainer, with real processes.

Trainings through the warm trainer give what a cold Ray Train run gives, bit for bit;
a killed warm trainer fails its stage in one line and the next command recovers; the
idle stop and `runyard local down` leave no process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import one_line_error, runyard_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

A, B = "regression1d_shallow", "mnist1d_mlp"


def configure(root: Path, epochs: dict[str, int], **ray) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ray"].update(ray)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name, n in epochs.items():
        pipe = root / "pipelines" / f"{name}.yaml"
        p = yaml.safe_load(pipe.read_text())
        p["recipe"].pop("steps", None)
        p["recipe"]["epochs"] = n
        pipe.write_text(yaml.safe_dump(p, sort_keys=False))


def state(root: Path) -> dict | None:
    from runyard.execution import local_ray

    return local_ray.read_state(root / ".runyard")


def warm_pids(root: Path, training: bool = False) -> set[int]:
    """The warm trainer processes of this project's local Ray (not of other projects on the
    machine); ``training``: only one running a training (Ray names it ray::WarmTrainer.train)."""
    from runyard.execution import local_ray

    recorded = state(root)
    name = "ray::WarmTrainer.train" if training else "ray::WarmTrainer"
    return {p.pid for p in (local_ray.processes(recorded) if recorded else [])
            if (p.info["cmdline"] or [""])[0].startswith(name)}


def wait_until(check, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return got


def train(root: Path, name: str) -> str:
    done = runyard_cli("train", name, cwd=root, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout.split("MLflow run ")[-1].strip()


def outcome(root: Path, run_id: str) -> tuple[dict, dict]:
    """A run's metric histories and the weights in models/<A>/."""
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = {k: [(m.step, m.value) for m in sorted(c.get_metric_history(run_id, k), key=lambda m: m.step)]
               for k in run.data.metrics if k.startswith(("train/", "val/", "test/"))}
    weights = torch.load(root / "models" / A / "model.pt", map_location="cpu", weights_only=True)
    return history, weights


@pytest.fixture
def warm_project(prepared):
    from runyard.execution import local_ray

    try:
        yield prepared
    finally:
        recorded = state(prepared)
        local_ray.down(prepared / ".runyard")
        if recorded:
            assert local_ray.processes(recorded) == [], "local down left processes behind"


def test_a_b_a_warm_is_bit_identical_to_cold(warm_project):
    root = warm_project
    configure(root, {A: 30, B: 2}, local_idle_s=600)
    first = train(root, A)
    actors = warm_pids(root)
    assert len(actors) == 1, "the training did not run on the warm trainer"
    train(root, B)
    again = train(root, A)
    assert warm_pids(root) == actors, "a new warm trainer was started: the trainings did not share one"
    warm_history, warm_weights = outcome(root, again)
    assert outcome(root, first)[0] == warm_history, "A after B differs from A's first warm run"
    assert runyard_cli("local", "down", cwd=root).returncode == 0

    # Cold: a private Ray for this command and Ray Train's controller and worker.
    configure(root, {}, local_idle_s=0)
    cold = train(root, A)
    assert state(root) is None and not warm_pids(root)
    cold_history, cold_weights = outcome(root, cold)
    assert warm_history == cold_history
    assert warm_weights.keys() == cold_weights.keys()
    for k in warm_weights:
        assert torch.equal(warm_weights[k], cold_weights[k]), k


def test_killed_warm_trainer_fails_in_one_line_and_the_next_command_recovers(warm_project):
    root = warm_project
    configure(root, {A: 400}, local_idle_s=600)
    proc = subprocess.Popen([sys.executable, "-m", "runyard", "train", A], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    # Mid-training: the run is RUNNING with epochs in the store.
    from tests.integration.test_fault_tolerance import logged_epochs

    wait_until(lambda: max(logged_epochs(root), default=-1) >= 2 or proc.poll() is not None, "epochs", 240)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    head = state(root)
    (pid,) = warm_pids(root, training=True)
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    line = one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert "warm trainer" in line
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    (run,) = c.search_runs([c.get_experiment_by_name(A).experiment_id])
    assert run.info.status == "FAILED"

    # The next command: the same local Ray, a fresh warm trainer.
    configure(root, {A: 3})
    train(root, A)
    assert state(root)["temp_root"] == head["temp_root"]
    assert warm_pids(root) and pid not in warm_pids(root)

    # A killed local Ray (every process of it): the next command starts a fresh one.
    from runyard.execution import local_ray, nodes

    nodes._terminate(local_ray.processes(head), grace_s=0)
    train(root, A)
    assert state(root)["temp_root"] != head["temp_root"]


def test_idle_local_ray_stops_itself(warm_project):
    root = warm_project
    connect = ("from runyard.config import RayParams; from runyard.execution import ray_session; "
               "ray_session.connect(RayParams(local_idle_s=3), 'test')")
    done = subprocess.run([sys.executable, "-c", connect], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = state(root)
    from runyard.execution import local_ray

    assert local_ray.processes(recorded), "no local Ray was started"
    wait_until(lambda: state(root) is None and not local_ray.processes(recorded), "the idle stop", 60)
