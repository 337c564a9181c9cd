"""The HTTP side of `runyard serve`: MLflow's pyfunc scoring protocol on FastAPI.

Parsing, schema enforcement and prediction encoding are MLflow's own
(``mlflow.pyfunc.scoring_server.invocations``); what is added here is reading the
model per request from the ``Watcher`` (so it can be swapped), ``/version``, limits on
the work one request may cause, and errors a caller can act on: a bad payload gets a
4xx with a one-line message that says what was expected, never a 500 and never an echo
of the whole input.

Limits (``Limits``): a body over ``max_body_bytes`` gets a 413, from its Content-Length
before anything is read, or as soon as a streamed (chunked) body passes the limit, so
it is never held whole (``read_body``). A batch of more than ``max_rows`` rows gets a
413 before the model sees it, whatever the content type (``RowLimited``). A prediction
gets ``timeout_s`` seconds, counted from the moment the body has arrived (waiting for a
free prediction thread included), then a 503. At most ``threads`` predictions run at
once; a request whose time runs out while it waits is dropped unstarted, so an
overloaded server sheds requests rather than piling them up. (A prediction already
running cannot be stopped: it finishes on its thread and its answer is dropped.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server
from mlflow.version import VERSION as MLFLOW_VERSION
from starlette.requests import ClientDisconnect

from runyard.serving.model import Served, Watcher

log = logging.getLogger("runyard.serve")

VERSION_HEADER = "X-Runyard-Model-Version"
INPUT_KEYS = ("inputs", "dataframe_split", "dataframe_records", "instances")
EXAMPLE = 'e.g. {"inputs": [[0.1, 0.2, ...], ...]}'
MB = 1024 * 1024
MAX_BODY_MB, MAX_ROWS, TIMEOUT_S = 10.0, 10_000, 30.0  # `runyard serve`'s defaults
DRAIN_S = 5.0  # how long the rest of a body over the limit is read and dropped, at most


@dataclass(frozen=True)
class Limits:
    """What one request may cost the server."""

    max_body_bytes: int = int(MAX_BODY_MB * MB)
    max_rows: int = MAX_ROWS
    timeout_s: float = TIMEOUT_S
    threads: int = field(default_factory=lambda: min(32, (os.cpu_count() or 1) + 4))  # asyncio.to_thread's


def payload_problem(body: bytes) -> str | None:
    """What is wrong with a JSON body before MLflow parses it, in words a caller can act on."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"the body is not valid JSON ({e}); send {EXAMPLE}"
    if not isinstance(data, dict):
        return f"the body must be a JSON object, not a {type(data).__name__}; send {EXAMPLE}"
    given = [k for k in INPUT_KEYS if k in data]
    if len(given) != 1:
        found = f"got keys {sorted(data)}" if not given else f"got {', '.join(given)}"
        return f"the body must have exactly one of {', '.join(INPUT_KEYS)} ({found}); send {EXAMPLE}"
    return None


_PREDICT_ERROR = re.compile(r"^Failed to predict data '.*?'\.\s*Error: ", re.S)
_SCHEMA_ERROR = re.compile(
    r"Failed to enforce schema of data '.*' with schema '(?P<schema>.*?)'\. Error: (?P<why>.*)", re.S)


def clean(message: str) -> str:
    """MLflow's message on one line, without its echo of the whole input."""
    message = _PREDICT_ERROR.sub("", message)
    if m := _SCHEMA_ERROR.search(message):
        message = f"the input does not match the model's signature {m['schema']}: {m['why']}"
    message = " ".join(message.split())
    return message if len(message) <= 500 else message[:497] + "..."


def rows(data: Any) -> int:
    """The batch size of a parsed input: a data frame, an array, named tensors or a list."""
    if isinstance(data, dict):
        return max((rows(v) for v in data.values()), default=0)
    shape = getattr(data, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else 1
    return len(data) if isinstance(data, list | tuple) else 1


class TooManyRows(MlflowException):
    """A batch over the limit. An MlflowException, so MLflow's scoring function re-raises it as it is."""

    def __init__(self, n: int, limit: int):
        self.line = f"the request has {n:,} rows; the limit is {limit:,} rows per request: split it"
        super().__init__(self.line)


class RowLimited:
    """The served model as MLflow's scoring function sees it: a batch over ``max_rows`` is
    refused after parsing (whatever the content type) and before the model runs."""

    def __init__(self, model: Any, max_rows: int):
        self.model, self.max_rows, self.metadata = model, max_rows, model.metadata

    def predict(self, data: Any, params: dict | None = None) -> Any:
        n = rows(data)
        if n > self.max_rows:
            raise TooManyRows(n, self.max_rows)
        return self.model.predict(data, params=params)


async def read_body(request: Request, limit: int) -> tuple[bytes | None, bool]:
    """The body, or None if it is over ``limit`` bytes; and whether all of it was read.

    A body over the limit is never held: its Content-Length says so before anything is
    read, or its size while it streams in. What is left of it is then read and dropped
    (for ``DRAIN_S`` at most) before the 413 goes out: a server that closes a connection
    its client is still sending on resets it, and a client that asked for the connection
    to be closed after the answer (Python's urllib always does) would see that reset and
    never the 413. nginx's "lingering close" is the same idea. A client that waits for
    ``100 Continue`` has sent nothing yet, and does not get to."""
    stream = request.stream()
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        if request.headers.get("expect", "").lower() == "100-continue":
            return None, False
    else:
        chunks: list[bytes] = []
        size = 0
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                break
            chunks.append(chunk)
        else:
            return b"".join(chunks), True
        del chunks
    try:
        async with asyncio.timeout(DRAIN_S):
            async for _ in stream:
                pass
    except TimeoutError:
        return None, False
    return None, True


def error(status: int, code: str, message: str, served: Served) -> JSONResponse:
    """The one-line JSON error every failed request gets."""
    return JSONResponse({"error_code": code, "message": message}, status_code=status,
                        headers={VERSION_HEADER: served.version})


def answer(served: Served, body: bytes, content_type: str, max_rows: int) -> Response:
    """One /invocations request, start to end; runs on a prediction thread."""
    if content_type.split(";")[0].strip() == scoring_server.CONTENT_TYPE_JSON:
        problem = payload_problem(body)
        if problem:
            return error(400, "BAD_REQUEST", problem, served)
    try:
        result = scoring_server.invocations(body, content_type, RowLimited(served.model, max_rows),
                                            served.input_schema)
    except TooManyRows as e:
        return error(413, "REQUEST_TOO_LARGE", e.line, served)
    except MlflowException as e:
        return error(e.get_http_status_code(), e.error_code, clean(e.message), served)
    except Exception as e:  # not the caller's fault: say so, and keep the traceback in the log
        log.exception(f"v{served.version} failed on a request")
        return error(500, "INTERNAL_ERROR", f"the server failed: {type(e).__name__}", served)
    if result.status != 200:  # e.g. 415 for a content type MLflow does not parse
        return error(result.status, "BAD_REQUEST", clean(result.response), served)
    return Response(result.response, media_type=result.mimetype, headers={VERSION_HEADER: served.version})


class _Throttled:
    """One warning per ``every_s`` at most, counting the ones it held back."""

    def __init__(self, every_s: float = 10.0):
        self.every_s, self.held, self.last = every_s, 0, -every_s

    def warn(self, message: str) -> None:
        self.held += 1
        now = time.monotonic()
        if now - self.last >= self.every_s:
            more = f" ({self.held - 1} more since the last warning)" if self.held > 1 else ""
            log.warning(message + more)
            self.held, self.last = 0, now


def build_app(watcher: Watcher, limits: Limits | None = None) -> FastAPI:
    """The FastAPI app serving ``watcher.served``, within ``limits`` (the defaults if None)."""
    limits = limits or Limits()
    predictors = ThreadPoolExecutor(limits.threads, thread_name_prefix="runyard-predict")
    slow = _Throttled()
    too_big = (f"the body is over the limit of {limits.max_body_bytes:,} bytes "
               f"({limits.max_body_bytes / MB:g} MB) per request: send fewer rows per request")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        predictors.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=f"runyard serve {watcher.target}", lifespan=lifespan)
    # As MLflow's own scoring server does: some flavours behave differently when served.
    os.environ.setdefault("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")
    # It warns about `instances` on every input that fails the signature, whatever the key used.
    logging.getLogger(scoring_server.__name__).setLevel(logging.ERROR)

    async def ping() -> Response:
        return Response("\n", media_type="application/json")

    app.get("/ping")(ping)
    app.get("/health")(ping)

    @app.get("/version")
    async def version() -> dict:
        served = watcher.served
        return {"model": watcher.target.name, "alias": watcher.target.alias, "version": served.version,
                "run_id": served.run_id, "mlflow": MLFLOW_VERSION}

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        served = watcher.served  # once: a reload during this request does not change who answers it
        try:
            body, whole = await read_body(request, limits.max_body_bytes)
        except ClientDisconnect:  # nobody is left to read this answer
            return error(400, "BAD_REQUEST", "the client went away before the body ended", served)
        if body is None:
            response = error(413, "REQUEST_TOO_LARGE", too_big, served)
            if not whole:  # what is left of it would be read as the next request
                response.headers["Connection"] = "close"
            return response
        content_type = request.headers.get("content-type") or scoring_server.CONTENT_TYPE_JSON
        work = asyncio.get_running_loop().run_in_executor(
            predictors, answer, served, body, content_type, limits.max_rows)
        try:
            return await asyncio.wait_for(work, limits.timeout_s)
        except TimeoutError:  # a prediction already running finishes on its thread; its answer is dropped
            slow.warn(f"v{served.version}: a request got no prediction within {limits.timeout_s:g} s")
            return error(503, "TEMPORARILY_UNAVAILABLE",
                         f"no prediction within the server's limit of {limits.timeout_s:g} s: "
                         "the server is busy or the batch too big; retry later or send fewer rows", served)

    return app
