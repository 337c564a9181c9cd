"""The outage helpers against a port nobody listens on (no server: a refused connection)."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from runyard.tracking.outage import TrackingUnavailable, is_transient, retry_until, try_once
from tests.services import free_port


def test_a_refused_connection_is_transient_and_retried_until_the_deadline():
    client = MlflowClient(f"http://127.0.0.1:{free_port()}")
    calls = []

    def call():
        calls.append(time.monotonic())
        return client.get_run("0" * 32)

    ok, _ = try_once(call)
    assert not ok
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="closing the run"):
        retry_until(call, start + 2.0, "closing the run")
    assert 1.5 < time.monotonic() - start < 5, "gives up at the deadline, not before, not much after"
    assert len(calls) >= 4  # quick attempts, no MLflow-side backoff


def test_other_errors_are_not_retried():
    def bad():
        raise ValueError("a bug, not an outage")

    assert not is_transient(ValueError("x"))
    with pytest.raises(ValueError):
        retry_until(bad, time.monotonic() + 60, "anything")
