"""The outage helpers against a port nobody listens on (no server: a refused connection)."""

from __future__ import annotations

import socket
import threading
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


def test_an_answer_cut_off_by_a_dying_server_is_transient():
    """A server killed mid-answer: the body ends before its Content-Length (IncompleteRead)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        def answer_truncated():
            for _ in range(2):
                conn, _ = server.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 100\r\n\r\n{")

        threading.Thread(target=answer_truncated, daemon=True).start()
        client = MlflowClient(f"http://127.0.0.1:{server.getsockname()[1]}")
        with pytest.raises(Exception) as cut:
            client.get_run("0" * 32)
        assert "IncompleteRead" in str(cut.value)
        assert is_transient(cut.value)
        assert try_once(lambda: client.get_run("0" * 32)) == (False, None)


def test_other_errors_are_not_retried():
    def bad():
        raise ValueError("a bug, not an outage")

    assert not is_transient(ValueError("x"))
    with pytest.raises(ValueError):
        retry_until(bad, time.monotonic() + 60, "anything")


def test_the_retrying_client_retries_every_call_then_fails_in_one_line():
    from runyard.tracking.client import RetryingClient

    url = f"http://127.0.0.1:{free_port()}"
    client = RetryingClient(MlflowClient(url), retry_s=1.5)
    assert client.tracking_uri == url  # attributes are the client's own
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable) as failed:
        client.log_metric("0" * 32, "val/acc", 0.5)
    took = time.monotonic() - start
    assert 1.2 < took < 5, took
    line = str(failed.value)
    assert "\n" not in line and line.startswith("log_metric: ") and url in line, line
    assert "params.yaml: mlflow.retry_s" in line, line


def test_the_retrying_client_passes_other_errors_at_once(tmp_path):
    from mlflow.exceptions import MlflowException

    from runyard.tracking.client import RetryingClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = RetryingClient(MlflowClient(uri), retry_s=60)
    start = time.monotonic()
    with pytest.raises(MlflowException):
        client.get_run("0" * 32)  # no such run: an answer, not an outage
    assert time.monotonic() - start < 10


def test_nested_and_concurrent_quick_requests_restore_the_environment(monkeypatch):
    import os
    import threading

    from runyard.tracking.outage import quick_requests

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    inside = threading.Event()
    leave = threading.Event()

    def other():
        with quick_requests():
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=other)
    t.start()
    inside.wait(10)
    with quick_requests(120):
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "120"
        leave.set()
        t.join(10)
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"  # still inside ours
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
