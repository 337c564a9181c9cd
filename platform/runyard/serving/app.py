"""The HTTP side of `runyard serve`: MLflow's pyfunc scoring protocol on FastAPI.

Parsing, schema enforcement and prediction encoding are MLflow's own
(``mlflow.pyfunc.scoring_server.invocations``); what is added here is reading the
model per request from the ``Watcher`` (so it can be swapped), ``/version``, and
errors a caller can act on: a bad payload gets a 4xx with a one-line message that
says what was expected, never a 500 and never an echo of the whole input.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server
from mlflow.version import VERSION as MLFLOW_VERSION

from runyard.serving.server import Served, Watcher, log

VERSION_HEADER = "X-Runyard-Model-Version"
INPUT_KEYS = ("inputs", "dataframe_split", "dataframe_records", "instances")
EXAMPLE = 'e.g. {"inputs": [[0.1, 0.2, ...], ...]}'


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


def build_app(watcher: Watcher) -> FastAPI:
    app = FastAPI(title=f"runyard serve {watcher.target}")
    # As MLflow's own scoring server does: some flavours behave differently when served.
    os.environ.setdefault("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")
    # It warns about `instances` on every input that fails the signature, whatever the key used.
    logging.getLogger(scoring_server.__name__).setLevel(logging.ERROR)

    def error(status: int, code: str, message: str, served: Served) -> JSONResponse:
        return JSONResponse({"error_code": code, "message": message}, status_code=status,
                            headers={VERSION_HEADER: served.version})

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
        body = await request.body()
        content_type = request.headers.get("content-type") or scoring_server.CONTENT_TYPE_JSON
        if content_type.split(";")[0].strip() == scoring_server.CONTENT_TYPE_JSON:
            problem = payload_problem(body)
            if problem:
                return error(400, "BAD_REQUEST", problem, served)
        try:
            result = await asyncio.to_thread(
                scoring_server.invocations, body, content_type, served.model, served.input_schema)
        except MlflowException as e:
            return error(e.get_http_status_code(), e.error_code, clean(e.message), served)
        except Exception as e:  # not the caller's fault: say so, and keep the traceback in the log
            log.exception(f"v{served.version} failed on a request")
            return error(500, "INTERNAL_ERROR", f"the server failed: {type(e).__name__}", served)
        if result.status != 200:  # e.g. 415 for a content type MLflow does not parse
            return error(result.status, "BAD_REQUEST", clean(result.response), served)
        return Response(result.response, media_type=result.mimetype, headers={VERSION_HEADER: served.version})

    return app
