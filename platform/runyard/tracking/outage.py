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
- when ``retry_s`` passes, the training fails in one line and the driver marks
  the run FAILED as soon as the server answers, waiting up to ``retry_s`` more;
  if it never does, the error says the run could not be closed.

Each attempt is one quick request (no MLflow-side retries, a 5 s timeout) so that
runyard, not the HTTP layer, decides how long to wait.
"""

from __future__ import annotations

import os
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
    """A refused or timed-out connection, or a server saying "try again later".

    MLflow wraps the requests error in an MlflowException without ``from``, so the
    cause is found in the exception's context chain.
    """
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.ConnectionError | requests.Timeout | requests.exceptions.RetryError):
            return True
        status = getattr(seen, "get_http_status_code", None)
        if callable(status) and status() in TRANSIENT_STATUS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def quick_requests() -> Iterator[None]:
    """MLflow HTTP calls inside make one attempt with a short timeout.

    MLflow reads these variables on every request. Only runyard's own retrying
    calls run inside, one at a time: rank 0's logger, the driver's end of run.
    """
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(ATTEMPT_TIMEOUT_S)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def try_once(fn: Callable[[], T]) -> tuple[bool, T | None]:
    """(True, result), or (False, None) on a transient failure; other errors raise."""
    try:
        with quick_requests():
            return True, fn()
    except Exception as e:
        if is_transient(e):
            return False, None
        raise


def retry_until(fn: Callable[[], T], deadline: float, what: str) -> T:
    """Call ``fn`` until it gets through or ``time.monotonic()`` passes ``deadline``.

    Waits 0.5 s after the first failure, doubling up to 4 s, so a server that
    comes back is used within seconds. Then raises TrackingUnavailable(``what``).
    """
    wait = 0.5
    while True:
        ok, result = try_once(fn)
        if ok:
            return result  # type: ignore[return-value]
        left = deadline - time.monotonic()
        if left <= 0:
            raise TrackingUnavailable(what)
        time.sleep(min(wait, left))
        wait = min(wait * 2, 4.0)
