"""Riding out a tracking server outage.

A tracking server that stops for a while in the middle of a training (a restart,
a redeploy) must not lose a metric, leave a run RUNNING, or stall the training.
MLflow's own client retries a refused request with exponential backoff inside
the call (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 7, backoff factor 2: about four
minutes), which blocks the caller the whole time, and its async logging drops a
batch whose retries ran out. So runyard does its own, bounded by one setting,
``mlflow.retry_s`` (params.yaml, default 120 s):

- rank 0 buffers each epoch's metrics (``epoch_logger``). A periodic send that
  fails on a transient error keeps the buffer and lets training go on; the next
  one tries again. Before a checkpoint and at the end of training the send waits,
  retrying, until ``retry_s`` after the first failure. Metrics carry their own
  timestamps, so a batch sent twice (the answer lost, not the request) is stored
  once: the SQL store drops exact duplicates.
- the driver ends the run with its final status the same way (``runs.tracked_run``).
- every other call the driver makes (train, evaluate, register, a search's parent
  and child runs, reproduce) goes through ``client.RetryingClient``: each call is
  retried through an outage until ``retry_s`` after it started, then fails in one
  line (``TrackingUnavailable``) naming the server and the setting. Writes are
  idempotent, so a stage that failed is simply run again once the server is back;
  creating a run is made so by ``once`` (a creation stored but never answered is found).
- when ``retry_s`` passes, the training fails in one line and the driver marks
  the run FAILED as soon as the server answers, waiting up to ``retry_s`` more;
  if it never does, the error says the run could not be closed.

Each attempt is one quick request (no MLflow-side retries, a 5 s timeout) so that
runyard, not the HTTP layer, decides how long to wait.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from runyard.errors import RunyardError

T = TypeVar("T")

ATTEMPT_TIMEOUT_S = 5
TRANSIENT_STATUS = {429, 502, 503, 504}


class TrackingUnavailable(RunyardError):
    """The tracking server did not answer within ``mlflow.retry_s``."""

    exit_code = 1


def is_transient(exc: BaseException) -> bool:
    """A refused, broken or timed-out connection, or a server saying "try again later".

    Broken: a server killed while it answered leaves a truncated body (requests'
    ChunkedEncodingError, "Connection broken: IncompleteRead"). MLflow wraps the requests
    error in an MlflowException without ``from``, so the cause is found in the
    exception's context chain.
    """
    import requests

    transient = (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                 requests.exceptions.ChunkedEncodingError)
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, transient):
            return True
        status = getattr(seen, "get_http_status_code", None)
        if callable(status) and status() in TRANSIENT_STATUS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_quick_lock = threading.Lock()
_quick_depth = 0
_quick_saved: dict[str, str | None] = {}


@contextmanager
def quick_requests(timeout_s: float = ATTEMPT_TIMEOUT_S) -> Iterator[None]:
    """MLflow HTTP calls inside make one attempt with a short timeout.

    MLflow reads these variables on every request. They are process-wide, so nested or
    concurrent users (the driver and a progress thread) share one setting: the first in
    saves the environment, the last out restores it. ``timeout_s``: longer for uploads."""
    global _quick_depth
    with _quick_lock:
        if _quick_depth == 0:
            _quick_saved.clear()
            _quick_saved.update({k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                                                 "MLFLOW_HTTP_REQUEST_TIMEOUT")})
        _quick_depth += 1
        current = float(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]) if _quick_depth > 1 else 0.0
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(timeout_s, current)))
    try:
        yield
    finally:
        with _quick_lock:
            _quick_depth -= 1
            if _quick_depth == 0:
                for k, v in _quick_saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


def try_once(fn: Callable[[], T], timeout_s: float = ATTEMPT_TIMEOUT_S) -> tuple[bool, T | None]:
    """(True, result), or (False, None) on a transient failure; other errors raise."""
    try:
        with quick_requests(timeout_s):
            return True, fn()
    except Exception as e:
        if is_transient(e):
            return False, None
        raise


def once(create: Callable[[], T], find: Callable[[], T | None]) -> Callable[[], T]:
    """``create`` for ``retry_until`` without creating twice.

    A request cut off after the server committed it (the server died before it answered)
    fails like one that never arrived. So from the second attempt on, ``find()`` first
    looks for what an earlier attempt may have created, and returns it if there is one.
    """
    attempts = 0

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        found = find() if attempts > 1 else None
        return create() if found is None else found

    return attempt


def retry_until(fn: Callable[[], T], deadline: float, what: str, timeout_s: float = ATTEMPT_TIMEOUT_S) -> T:
    """Call ``fn`` until it gets through or ``time.monotonic()`` passes ``deadline``.

    Waits 0.5 s after the first failure, doubling up to 4 s, so a server that
    comes back is used within seconds. Then raises TrackingUnavailable(``what``).
    """
    wait = 0.5
    while True:
        ok, result = try_once(fn, timeout_s)
        if ok:
            return result  # type: ignore[return-value]
        left = deadline - time.monotonic()
        if left <= 0:
            raise TrackingUnavailable(what)
        time.sleep(min(wait, left))
        wait = min(wait * 2, 4.0)
