"""A run's lifecycle against a real sqlite store: SIGTERM, or an answer cut off, at the worst moment."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import mlflow
import pytest

from runyard.tracking.runs import signals_deferred, tracked_run, use_tracking


@pytest.fixture
def sigterm_exits(monkeypatch):
    """SIGTERM raises SystemExit, as the CLI's handler does."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    yield
    signal.signal(signal.SIGTERM, previous)


def test_signals_inside_are_delivered_on_leaving(sigterm_exits):
    # Another thread, as the CLI has (MLflow's, Ray's): a signal mask would not hold there.
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    reached_the_end = False
    try:
        with pytest.raises(SystemExit), signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # a signal not held would be handled here
            reached_the_end = True
    finally:
        stop.set()
        other.join()
    assert reached_the_end


def test_sigterm_while_the_run_is_being_created_ends_it_killed(tmp_path, monkeypatch, sigterm_exits):
    """The window the CLI's SIGTERM test once hit: the run exists (RUNNING in the store) but
    its params are still being logged. Without care MLflow's exit hook ended it FINISHED."""
    client = use_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    log_params = mlflow.log_params

    def signalled_midway(params):
        os.kill(os.getpid(), signal.SIGTERM)
        return log_params(params)

    monkeypatch.setattr(mlflow, "log_params", signalled_midway)
    with pytest.raises(SystemExit), tracked_run(exp_id, "r", {"lr": 0.1}, {}):
        pytest.fail("the body must not run: the signal came first")
    (run,) = client.search_runs([exp_id])
    assert run.info.status == "KILLED"
    assert mlflow.active_run() is None


def test_a_run_whose_creation_was_cut_off_after_it_was_stored_is_not_created_twice(tmp_path, cut_off_next_run_creation):
    """The server stored the run, then died before it answered: the retry finds that run
    by its token instead of creating a second one that would stay RUNNING."""
    client = use_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    cut = cut_off_next_run_creation()
    with tracked_run(exp_id, "r", {"lr": 0.1}, {"k": "v"}, retry_s=30) as run_id:
        pass
    (run,) = client.search_runs([exp_id])
    assert run.info.run_id == run_id == cut[0]
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"} and run.data.tags["k"] == "v"
