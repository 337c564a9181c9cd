"""`runyard serve`: a registered model over HTTP, checked against the same model loaded directly.

Real parts throughout: models logged and registered in the project's sqlite MLflow store
the way `runyard train` and `runyard register` do it, `runyard serve` as a real process
on a loopback port, plain HTTP requests. The deep models are logged in-process with
their initial weights: a Ray Train run would cost more than the whole file may.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import one_line_error, runyard_cli
from tests.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEEP, CLASSICAL, ALIAS = "mnist1d_logistic", "digits_knn", "champion"
STARTUP_S = 180  # a deadline, not a wait: a busy 2-core machine takes long to import torch and MLflow


def request(port: int, path: str, body: bytes | dict | None = None,
            content_type: str = "application/json") -> tuple[int, dict, dict]:
    """One HTTP call; (status, JSON body, headers), whatever the status."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": content_type} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, text, headers = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, text, headers = e.code, e.read(), dict(e.headers)
    return status, (json.loads(text) if text.strip() else {}), headers


def wait_for(check, what: str, deadline_s: float, proc=None, log: Path | None = None):
    """Poll ``check()`` until it returns something truthy, or fail naming ``what``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"runyard serve exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        try:
            result = check()
        except OSError:  # not listening yet
            result = None
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"no {what} within {deadline_s} s" + (f":\n{log.read_text()[-3000:]}" if log else ""))


@contextmanager
def serve_in_process(app) -> Iterator[int]:
    """``app`` served by uvicorn on a thread, on a real loopback socket; its port."""
    import uvicorn

    from runyard.serving.server import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        port = sock.getsockname()[1]
        wait_for(lambda: request(port, "/ping")[0] == 200, "answer on /ping", 30)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def start_serving(root: Path, log: Path, *args: str) -> tuple[subprocess.Popen, int]:
    """`runyard serve DEEP@ALIAS` as a real process on a free loopback port, answering."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "runyard", "serve", f"{DEEP}@{ALIAS}", "--port", str(port),
                                 *args], cwd=root, stdout=out, stderr=subprocess.STDOUT)
    wait_for(lambda: request(port, "/ping")[0] == 200, "answer on /ping", STARTUP_S, proc, log)
    return proc, port


def stop_serving(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)


def register_version(project, seed: int) -> str:
    """A logistic model logged and registered as `runyard train` and `runyard register` do
    (``tracking.models.log_pytorch_model``, ``registry.register``); its version. Its weights
    are the seed's initial ones: serving does not care how they were found, and this file's
    time is better spent serving than training."""
    import mlflow
    import torch

    from runyard.models import build_model
    from runyard.tracking import registry
    from runyard.tracking.client import Tracking
    from runyard.tracking.models import log_pytorch_model

    exp, info, splits = project.load_inputs(DEEP)
    torch.manual_seed(seed)
    net = build_model(exp.model, info.input_shape, info.num_outputs).eval()
    with torch.no_grad():
        val_acc = (net(torch.from_numpy(splits.x_val)).argmax(1).numpy() == splits.y_val).mean()
    tracking = Tracking.of(project)
    with mlflow.start_run(experiment_id=tracking.experiment_id(exp)) as run:
        mlflow.log_metric("val/acc", float(val_acc))
        model_uri = log_pytorch_model(net, splits.x_test[:5])
    return registry.register(tracking.client, DEEP, model_uri, run.info.run_id, "val/acc", "max", ALIAS).version


def test_serve_predicts_like_the_model_and_follows_its_alias(prepared, project, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    root = prepared
    assert register_version(project, seed=0) == "1"
    x = np.load(root / "data" / "mnist1d" / "x_test.npy")[:200]
    v1 = mlflow.pyfunc.load_model(f"models:/{DEEP}/1").predict(x)

    port, poll_s, log = free_port(), 1.0, tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runyard", "serve", f"{DEEP}@{ALIAS}", "--port", str(port),
             "--poll-s", str(poll_s)], cwd=root, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: request(port, "/ping")[0] == 200, "answer on /ping", STARTUP_S, proc, log)
        assert request(port, "/health")[0] == 200
        status, version, _ = request(port, "/version")
        assert status == 200 and version["model"] == DEEP and version["alias"] == ALIAS
        assert version["version"] == "1"

        # Real test inputs, as a tensor and as a data frame: the registered model's very outputs.
        status, body, headers = request(port, "/invocations", {"inputs": x.tolist()})
        assert status == 200 and headers["x-runyard-model-version"] == "1"
        assert np.allclose(np.asarray(body["predictions"]), v1, atol=1e-5)
        split = {"dataframe_split": {"columns": [str(i) for i in range(x.shape[1])], "data": x[:20].tolist()}}
        status, body, _ = request(port, "/invocations", split)
        assert status == 200 and np.allclose(np.asarray(body["predictions"]), v1[:20], atol=1e-5)

        # Bad payloads: a 4xx naming what is wrong, on one short line; never a 500.
        bad = [
            (b"not json", "application/json", "not valid JSON"),
            (b"[1, 2]", "application/json", "must be a JSON object"),
            ({"input": x[:2].tolist()}, "application/json", "exactly one of inputs"),
            ({"inputs": x[:2, :20].tolist()}, "application/json", "does not match the model's signature"),
            ({"inputs": [["a"] * 40]}, "application/json", "could not convert string to float"),
            ({"inputs": [[0.0] * 40, [0.0] * 39]}, "application/json", "inhomogeneous"),
            ({"inputs": x[:2].tolist()}, "text/plain", "only supports the following content types"),
        ]
        for payload, content_type, fragment in bad:
            status, body, _ = request(port, "/invocations", payload, content_type)
            assert 400 <= status < 500, (payload, status, body)
            message = body["message"]
            assert fragment in message and "\n" not in message and len(message) < 600, (payload, message)
        assert "(-1, 40)" in request(port, "/invocations", {"inputs": x[:2, :20].tolist()})[1]["message"]

        # A second model, registered and made champion: served within the poll interval.
        version2 = register_version(project, seed=1)
        v2 = mlflow.pyfunc.load_model(f"models:/{DEEP}/{version2}").predict(x)
        assert not np.allclose(v1, v2, atol=1e-3)  # else the check below could not tell them apart
        MlflowClient().set_registered_model_alias(DEEP, ALIAS, version2)
        moved = time.monotonic()
        wait_for(lambda: request(port, "/version")[1]["version"] == version2, f"switch to v{version2}",
                 60, proc, log)
        switch_s = time.monotonic() - moved
        status, body, headers = request(port, "/invocations", {"inputs": x.tolist()})
        assert status == 200 and headers["x-runyard-model-version"] == version2
        assert np.allclose(np.asarray(body["predictions"]), v2, atol=1e-5)

        # The alias cannot be resolved any more: the current model stays served, one warning.
        MlflowClient().delete_registered_model_alias(DEEP, ALIAS)
        wait_for(lambda: "cannot resolve" in log.read_text(), "warning", 30, proc, log)
        status, body, _ = request(port, "/invocations", {"inputs": x[:5].tolist()})
        assert status == 200 and np.allclose(np.asarray(body["predictions"]), v2[:5], atol=1e-5)
        assert request(port, "/version")[1]["version"] == version2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM  # after a graceful shutdown, at once
    lines = log.read_text().splitlines()
    assert sum(f"serving {DEEP}@{ALIAS} v1" in ln for ln in lines) == 1
    assert sum(f"reloaded {DEEP}@{ALIAS}: v1 -> v{version2}" in ln for ln in lines) == 1
    assert sum("WARNING cannot resolve" in ln and f"still serving v{version2}" in ln for ln in lines) == 1
    assert f"stopped serving {DEEP}@{ALIAS} v{version2}" in lines[-1]
    print(f"alias moved -> new version served after {switch_s:.1f} s (poll every {poll_s} s)")


def test_serve_a_classical_model_and_refuse_bad_targets(prepared, project, monkeypatch, caplog):
    """The sklearn flavour served in-process; bad targets and a busy port refused in one line;
    a registry that stops answering leaves the model served."""
    import logging

    import mlflow

    from runyard.commands.register import register
    from runyard.commands.train import train
    from runyard.errors import RunyardError
    from runyard.serving.app import Limits, build_app
    from runyard.serving.model import Target, Watcher, load, resolve
    from runyard.serving.server import serve

    root = prepared
    train(project, CLASSICAL)
    assert register(project, CLASSICAL).version == "1"

    # Bad targets, a busy port: one line each, before anything is loaded or served.
    assert "MODEL@ALIAS: 'digits_knn' is not a registered model and an alias" in one_line_error(
        runyard_cli("serve", CLASSICAL, cwd=root, timeout=120))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases = [
            (f"digits_knm@{ALIAS}", {}, f"no registered model 'digits_knm'; registered: {CLASSICAL}"),
            (f"{CLASSICAL}@champ", {}, f"model '{CLASSICAL}' has no alias 'champ'; its aliases: champion (v1)"),
            (f"{CLASSICAL}@{ALIAS}", {"port": busy.getsockname()[1]}, "is already in use"),
            (f"{CLASSICAL}@{ALIAS}", {"poll_s": 0}, "--poll-s: must be > 0"),
            (f"{CLASSICAL}@{ALIAS}", {"max_body_mb": 0}, "--max-body-mb: must be > 0"),
            (f"{CLASSICAL}@{ALIAS}", {"max_rows": 0}, "--max-rows: must be >= 1"),
            (f"{CLASSICAL}@{ALIAS}", {"timeout_s": -1}, "--timeout-s: must be > 0"),
        ]
        for spec, kwargs, fragment in cases:
            with pytest.raises(RunyardError) as err:
                serve(project, spec, **kwargs)
            assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)

    # Served in-process: the pieces `serve` wires together, on a real socket.
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")  # as serving sets it; undone afterwards
    target = Target(CLASSICAL, ALIAS)
    client = mlflow.MlflowClient()
    watcher = Watcher(client, target, load(target, resolve(client, target, "params.yaml")))
    with serve_in_process(build_app(watcher)) as port:
        x = np.load(root / "data" / "digits" / "x_test.npy")
        flat = x.reshape(len(x), -1)
        expected = mlflow.pyfunc.load_model(f"models:/{CLASSICAL}@{ALIAS}").predict(flat)
        status, body, headers = request(port, "/invocations", {"inputs": flat.tolist()})
        assert status == 200 and headers["x-runyard-model-version"] == "1"
        assert np.array_equal(np.asarray(body["predictions"]), expected)
        # The 8x8 images as they are: the flat features the estimator takes are asked for.
        status, body, _ = request(port, "/invocations", {"inputs": x[:3].tolist()})
        assert status == 400 and "(-1, 64)" in body["message"], body
        # Nothing moved: a poll keeps what is served.
        assert watcher.poll() is False and watcher.served.version == "1"
        # A registry server that does not answer (nothing listens there): still served, one warning.
        nowhere = f"http://127.0.0.1:{free_port()}"
        watcher.client = mlflow.MlflowClient(nowhere, registry_uri=nowhere)
        with caplog.at_level(logging.INFO, logger="runyard.serve"):
            assert watcher.poll() is False and watcher.poll() is False
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "still serving v1" in warnings[0], warnings
        assert request(port, "/invocations", {"inputs": flat[:5].tolist()})[0] == 200

    # Tight limits: the batch limit counts rows whatever the input key; a prediction that
    # takes too long gets a 503 in one line (one warning), and the server goes on answering.
    caplog.clear()
    with serve_in_process(build_app(watcher, Limits(max_rows=5))) as port:
        for payload in ({"inputs": flat[:6].tolist()}, {"instances": flat[:6].tolist()},
                        {"dataframe_split": {"columns": [str(i) for i in range(64)], "data": flat[:6].tolist()}}):
            status, body, _ = request(port, "/invocations", payload)
            assert status == 413 and body["error_code"] == "REQUEST_TOO_LARGE", (status, body)
            assert body["message"] == "the request has 6 rows; the limit is 5 rows per request: split it"
        status, body, _ = request(port, "/invocations", {"inputs": flat[:5].tolist()})
        assert status == 200 and np.array_equal(np.asarray(body["predictions"]), expected[:5])
    many = np.tile(flat, (10, 1))  # some 3,600 rows: far longer to predict than the limit below
    with caplog.at_level(logging.WARNING, logger="runyard.serve"), \
            serve_in_process(build_app(watcher, Limits(timeout_s=0.001))) as port:
        for _ in range(2):
            status, body, headers = request(port, "/invocations", {"inputs": many.tolist()})
            assert status == 503 and body["error_code"] == "TEMPORARILY_UNAVAILABLE", (status, body)
            assert "no prediction within the server's limit of 0.001 s" in body["message"]
            assert "\n" not in body["message"] and headers["x-runyard-model-version"] == "1"
        assert request(port, "/version")[0] == 200
    slow = [r.getMessage() for r in caplog.records if "got no prediction" in r.getMessage()]
    assert len(slow) == 1 and "v1: a request got no prediction within 0.001 s" in slow[0], slow


# --------------------------------------------------------------------------- under load

CLIENTS = 32  # client threads, each with its own keep-alive connection
LOAD_S = 20.0  # how long they send, at least (longer only until the alias move has been served 2 s)
WARMUP_S = 3.0  # load before the server's memory is taken as the baseline
BATCH = 8  # rows per request
MEMORY_GROWTH = 1.5  # RSS at the end / RSS after warm-up, at most
VERSION_HEADER = "X-Runyard-Model-Version"


def rss_mb(proc: subprocess.Popen) -> float:
    import psutil

    return psutil.Process(proc.pid).memory_info().rss / 2**20


class Client(threading.Thread):
    """Posts one batch again and again on one keep-alive connection until ``stop``;
    keeps what each answer was (no answer is an error, kept too)."""

    def __init__(self, port: int, body: bytes, stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.body, self.stop = port, body, stop
        self.answers: list[tuple[float, float, int, str]] = []  # start, latency s, status, version
        self.bodies: dict[str, set[bytes]] = {}  # version -> the distinct prediction bodies it sent
        self.errors: list[str] = []

    def run(self) -> None:
        import http.client

        conn = None
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                conn.request("POST", "/invocations", self.body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                text, version = r.read(), r.getheader(VERSION_HEADER, "")
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(f"{type(e).__name__}: {e}")
                conn = None
                continue
            self.answers.append((start, time.monotonic() - start, r.status, version))
            if r.status == 200:
                self.bodies.setdefault(version, set()).add(text)
            else:
                self.errors.append(f"{r.status}: {text[:300]!r}")


def test_serve_under_load_answers_every_request_and_moves_to_the_new_version(prepared, project, tmp_path):
    """32 clients for LOAD_S on loopback, the alias moved to a new version meanwhile: every
    request answered 200 by the version it names, each client's versions go from old to
    new only, latency reported, the server's memory flat after warm-up."""
    import mlflow
    from mlflow import MlflowClient

    root = prepared
    assert register_version(project, seed=0) == "1"
    x = np.load(root / "data" / "mnist1d" / "x_test.npy")[:BATCH]
    expected = {"1": mlflow.pyfunc.load_model(f"models:/{DEEP}/1").predict(x)}
    log = tmp_path / "serve.log"
    proc, port = start_serving(root, log, "--poll-s", "1")
    stop = threading.Event()
    clients = [Client(port, json.dumps({"inputs": x.tolist()}).encode(), stop) for _ in range(CLIENTS)]
    try:
        started = time.monotonic()
        for c in clients:
            c.start()

        def served_v2_since() -> float | None:
            firsts = [a[0] + a[1] for c in clients for a in list(c.answers) if a[3] == "2"]
            return min(firsts) if firsts else None

        rss, moved, v2_at = [], None, None
        while True:  # pace the load and sample the server's memory; bounded below
            elapsed = time.monotonic() - started
            assert proc.poll() is None, f"runyard serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            rss.append((elapsed, rss_mb(proc)))
            if moved is None and elapsed >= LOAD_S / 3:
                version2 = register_version(project, seed=1)
                MlflowClient().set_registered_model_alias(DEEP, ALIAS, version2)
                moved = time.monotonic()
                expected[version2] = mlflow.pyfunc.load_model(f"models:/{DEEP}/{version2}").predict(x)
            v2_at = v2_at or served_v2_since()
            if elapsed >= LOAD_S and v2_at is not None and time.monotonic() - v2_at >= 2:
                break
            assert elapsed < LOAD_S + 60, f"v2 not served 60 s after the load's end:\n{log.read_text()[-3000:]}"
            stop.wait(0.5)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=90)
        load_s = time.monotonic() - started
        stop_serving(proc)

    errors = [e for c in clients for e in c.errors]
    assert not errors, f"{len(errors)} requests failed, e.g. {errors[:5]}"
    answers = [a for c in clients for a in c.answers]
    assert all(a[2] == 200 for a in answers)
    # Each answer is the prediction of the version its header names.
    for c in clients:
        for version, bodies in c.bodies.items():
            for text in bodies:
                assert np.allclose(np.asarray(json.loads(text)["predictions"]), expected[version], atol=1e-5)
    # Old to new, never back: within each client (its requests are sequential), and every
    # client ends on the new version.
    for c in clients:
        versions = [a[3] for a in c.answers]
        assert versions == sorted(versions, key=int) and versions[-1] == version2, versions
    assert {a[3] for a in answers} == {"1", version2}
    assert all(c.answers[0][3] == "1" for c in clients)

    measured = np.array([a[1] for a in answers if a[0] - started >= WARMUP_S]) * 1000
    p50, p99 = np.percentile(measured, [50, 99])
    warm = next(mb for t, mb in rss if t >= WARMUP_S)
    end = rss[-1][1]
    print(f"\nload: {CLIENTS} clients x {load_s:.0f} s, {len(answers)} requests of {BATCH} rows "
          f"({len(answers) / load_s:.0f}/s), 0 errors; latency p50 {p50:.0f} ms, p99 {p99:.0f} ms; "
          f"server RSS {warm:.0f} MB after warm-up, {max(mb for _, mb in rss):.0f} MB at most, "
          f"{end:.0f} MB at the end; "
          f"alias moved -> v{version2} served after {v2_at - moved:.1f} s")
    assert end <= MEMORY_GROWTH * warm, f"RSS grew from {warm:.0f} MB to {end:.0f} MB: {rss}"
    assert sum(f"reloaded {DEEP}@{ALIAS}: v1 -> v{version2}" in ln for ln in log.read_text().splitlines()) == 1


def test_serve_refuses_an_oversize_request_in_one_line(prepared, project, tmp_path):
    """The defaults: a body over 10 MB gets a 413 whether it says its length or streams
    (chunked), without the server holding it; a batch over 10,000 rows gets a 413; 10,000
    rows are answered."""
    import http.client

    root = prepared
    assert register_version(project, seed=0) == "1"
    log = tmp_path / "serve.log"
    proc, port = start_serving(root, log)
    row = b"[" + b", ".join([b"0.125"] * 40) + b"]"
    huge = b'{"inputs": [' + b", ".join([row] * 345_000) + b"]}"  # ~97 MB, the size that took 47 s and 775 MB
    try:
        request(port, "/invocations", {"inputs": [[0.0] * 40]})  # the first prediction's own allocations
        before = rss_mb(proc)

        start = time.monotonic()
        status, body, _ = request(port, "/invocations", huge)
        took = time.monotonic() - start
        assert status == 413 and body["error_code"] == "REQUEST_TOO_LARGE", (status, body)
        assert "over the limit of 10,485,760 bytes (10 MB) per request" in body["message"]
        assert "\n" not in body["message"] and len(body["message"]) < 300

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        chunks = (huge[i:i + 2**16] for i in range(0, len(huge), 2**16))
        conn.request("POST", "/invocations", chunks, {"Content-Type": "application/json"}, encode_chunked=True)
        r = conn.getresponse()
        chunked = json.loads(r.read())
        assert r.status == 413 and chunked == body, (r.status, chunked)
        conn.close()
        after = rss_mb(proc)

        status, body, _ = request(port, "/invocations", {"inputs": [[0.5] * 40] * 10_001})
        assert status == 413 and body["message"] == (
            "the request has 10,001 rows; the limit is 10,000 rows per request: split it"), body
        status, body, _ = request(port, "/invocations", {"inputs": [[0.5] * 40] * 10_000})
        assert status == 200 and np.asarray(body["predictions"]).shape == (10_000, 10)
    finally:
        stop_serving(proc)
    print(f"\n97 MB body: 413 after {took:.2f} s; server RSS {before:.0f} MB before, {after:.0f} MB after "
          "both oversize bodies")
    assert after - before < 64, f"server RSS grew {after - before:.0f} MB on bodies it refused"
    assert took < 30
