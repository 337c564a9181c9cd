"""A tracking server stopped for 30 s in the middle of a training, then restarted.

Real parts: `mlflow server` on sqlite, `runyard train` on a local Ray. The training
goes on while the server is down (rank 0 buffers its epochs), finishes, and the run
ends FINISHED with every epoch's metrics exactly once. Past ``mlflow.retry_s`` the
training fails in one line instead, and never hangs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests import services

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXP = "regression1d_shallow"
# Long enough that epochs are still ending while the server is down on a fast machine:
# the first epochs reach the store after one flush (5 s), and 150 epochs (~5 s) once
# finished before that. 1000 epochs are ~40 s here, about the outage plus the restart.
EPOCHS = 1000
OUTAGE_S = 30
KEYS = ("train/loss", "train/mse", "train/lr", "val/loss", "val/mse")


def epochs_logged(server: services.RestartableMlflow) -> list[int]:
    """Steps of train/loss, read from the store's file: works while the server is down."""
    return [step for (step,) in server.rows("select step from metrics where key = 'train/loss'")]


@pytest.fixture
def server(tmp_path):
    s = services.RestartableMlflow(tmp_path)
    s.start()
    yield s
    services.stop(s.proc)


def configure(root: Path, retry_s: float) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["mlflow"]["retry_s"] = retry_s
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    pipe = root / "pipelines" / f"{EXP}.yaml"
    p = yaml.safe_load(pipe.read_text())
    p["recipe"]["epochs"] = EPOCHS
    pipe.write_text(yaml.safe_dump(p, sort_keys=False))


def start_training(root: Path, server: services.RestartableMlflow) -> subprocess.Popen:
    import os

    return subprocess.Popen(
        [sys.executable, "-m", "runyard", "train", EXP], cwd=root, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "MLFLOW_TRACKING_URI": server.url},
    )


def wait_first_epochs(server: services.RestartableMlflow, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not epochs_logged(server):
        assert proc.poll() is None, f"training ended early:\n{proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "no epoch logged"
        time.sleep(0.2)


def the_run(server: services.RestartableMlflow):
    from mlflow import MlflowClient

    client = MlflowClient(server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(EXP).experiment_id])
    return client, run


def test_training_rides_out_a_30s_outage(prepared, server):
    # Generous: on a loaded 2-core machine `mlflow server` alone takes a minute or more to
    # start again, and this test is about riding out the outage, not about the default.
    configure(prepared, retry_s=600)
    proc = start_training(prepared, server)
    wait_first_epochs(server, proc)
    first = max(epochs_logged(server))
    down = time.time()
    server.kill()
    time.sleep(OUTAGE_S)  # the outage itself: nothing to poll for
    assert proc.poll() is None, "the training died during the outage"
    up = time.time()
    server.start()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]

    client, run = the_run(server)
    assert run.info.status == "FINISHED"
    for key in KEYS:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(EPOCHS)), f"{key}: each epoch exactly once"
    # Training did not wait for the server: epochs ended while it was down.
    stamps = [m.timestamp / 1000 for m in client.get_metric_history(run.info.run_id, "train/loss")
              if m.step > first]
    assert any(down < t < up for t in stamps), (down, up, sorted(stamps))
    assert (prepared / "models" / EXP / "model.pt").is_file()


def test_outage_longer_than_retry_s_fails_in_one_line(prepared, server):
    """The server never comes back: the training stops with one error line saying the
    run could not be closed, within seconds of ``retry_s``, instead of hanging."""
    configure(prepared, retry_s=2)
    proc = start_training(prepared, server)
    wait_first_epochs(server, proc)
    server.kill()
    killed = time.monotonic()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("runyard: error: ")]
    assert len(errors) == 1, err[-3000:]
    assert "mlflow.retry_s" in errors[0] and "could not be marked FAILED" in errors[0], errors[0]
    assert time.monotonic() - killed < 60
    assert not (prepared / "models" / EXP / "model.pt").exists()
