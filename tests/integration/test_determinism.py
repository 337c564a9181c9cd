"""Determinism as a promise: the same seed on the same machine gives bit-identical weights
and per-epoch metrics, for two cold trainings and for a training killed after a checkpoint
and continued with `runyard train --resume`.

Real `runyard train` processes (each its own local Ray and Ray Train worker), a real
MLflow sqlite store, the driver killed with SIGKILL.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import runyard_cli
from tests.services import kill

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME, EPOCHS = "regression1d_shallow", 12
# Metrics a training computes (not its timings: cost/*, system/*).
TRAINING_METRICS = ("train/", "val/")


def configure(root: Path) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ray"].update(checkpoint_every=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    pipe = root / "pipelines" / f"{NAME}.yaml"
    spec = yaml.safe_load(pipe.read_text())
    # Small batches: enough steps per epoch for the kill to land mid-training, and
    # dropout-free model + cosine schedule: the LR schedule's state must resume too.
    spec["recipe"].update(epochs=EPOCHS, batch_size=20)
    spec["model"]["width"] = 256
    pipe.write_text(yaml.safe_dump(spec, sort_keys=False))


def client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def history(root: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every training metric of the run: key -> [(epoch, value)], in epoch order."""
    c = client(root)
    keys = [k for k in c.get_run(run_id).data.metrics if k.startswith(TRAINING_METRICS)]
    assert keys, "the run logged no training metrics"
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(run_id, k)) for k in keys}


def weights(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "models" / NAME / "model.pt", map_location="cpu", weights_only=True)


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: weights differ (max |diff| {(a[k] - b[k]).abs().max():g})"


def train(root: Path, *extra: str) -> tuple[str, dict, dict]:
    """One cold `runyard train`; (run id, its metric history, the final weights)."""
    done = runyard_cli("train", NAME, *extra, cwd=root, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    run_id = json.loads((root / "models" / NAME / "run.json").read_text())["run_id"]
    return run_id, history(root, run_id), weights(root)


def _latest_run(root: Path) -> str:
    c = client(root)
    exp = c.get_experiment_by_name(NAME)
    return c.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0].info.run_id


def test_same_seed_gives_identical_weights_and_metrics_cold_and_resumed(prepared):
    configure(prepared)
    first_id, first_history, first_weights = train(prepared)
    assert [s for s, _ in first_history["train/loss"]] == list(range(EPOCHS))
    tags = client(prepared).get_run(first_id).data.tags
    assert tags["runyard.deterministic"] == "true"  # CPU

    # Cold, again: a new process, a new Ray, a new run.
    second_id, second_history, second_weights = train(prepared)
    assert second_id != first_id
    assert second_history == first_history, "a rerun with the same seed logged different metrics"
    assert_identical(first_weights, second_weights)

    # Killed after a checkpoint (every 2 epochs; the epoch logger flushes before each),
    # then resumed from it.
    shutil.rmtree(prepared / "models" / NAME)
    proc = subprocess.Popen([sys.executable, "-m", "runyard", "train", NAME], cwd=prepared,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while _running_epochs(prepared) < 5:  # epochs 0-3 flushed with the checkpoint after epoch 3
        assert proc.poll() is None, f"training ended before the kill:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.1)
    kill(proc)
    resumed_id = _latest_run(prepared)
    assert client(prepared).get_run(resumed_id).info.status == "RUNNING"
    assert _running_epochs(prepared) < EPOCHS, "the kill came too late to test a resume"

    done = runyard_cli("train", NAME, "--resume", cwd=prepared, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "runyard: resuming from the checkpoint after epoch" in done.stdout + done.stderr
    assert resumed_id in done.stdout
    assert history(prepared, resumed_id) == first_history, "a resumed training logged different metrics"
    assert_identical(first_weights, weights(prepared))


def _running_epochs(root: Path) -> int:
    """Epochs the RUNNING run has logged (plain sqlite: read beside the training's writes)."""
    try:
        with sqlite3.connect(root / "mlruns" / "mlflow.db") as con:
            return con.execute(
                "select count(distinct m.step) from metrics m join runs r on m.run_uuid = r.run_uuid "
                "where m.key = 'train/loss' and r.status = 'RUNNING'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
