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
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import one_line_error, runyard_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEEP, CLASSICAL, ALIAS = "mnist1d_logistic", "digits_knn", "champion"
STARTUP_S = 180  # a deadline, not a wait: a busy 2-core machine takes long to import torch and MLflow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def register_version(project, seed: int) -> str:
    """A logistic model logged and registered as `runyard train` and `runyard register` do
    (``stages.log_model``, ``registry.register``); its version. Its weights are the seed's
    initial ones: serving does not care how they were found, and this file's time is better
    spent serving than training."""
    import mlflow
    import torch

    from runyard import stages
    from runyard.models import build_model
    from runyard.tracking import registry
    from runyard.tracking.runs import ensure_experiment, use_tracking
    from runyard.tracking.uri import project_tracking_uri

    exp, info, splits = stages.load_inputs(project, DEEP)
    torch.manual_seed(seed)
    net = build_model(exp.model, info.input_shape, info.num_outputs).eval()
    with torch.no_grad():
        val_acc = (net(torch.from_numpy(splits.x_val)).argmax(1).numpy() == splits.y_val).mean()
    client = use_tracking(project_tracking_uri(project))
    exp_id = ensure_experiment(client, DEEP, str(project.root / "mlruns" / "artifacts" / DEEP))
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_metric("val/acc", float(val_acc))
        model_uri = stages.log_model(project, net, splits.x_test[:5])
    return registry.register(client, DEEP, model_uri, run.info.run_id, "val/acc", "max", ALIAS).version


def test_serve_predicts_like_the_model_and_follows_its_alias(prepared, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from runyard.config import Project

    root = prepared
    project = Project(root)
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


def test_serve_a_classical_model_and_refuse_bad_targets(prepared, monkeypatch, caplog):
    """The sklearn flavour served in-process; bad targets and a busy port refused in one line;
    a registry that stops answering leaves the model served."""
    import logging

    import mlflow
    import uvicorn

    from runyard import stages
    from runyard.config import Project
    from runyard.errors import RunyardError
    from runyard.serving.app import build_app
    from runyard.serving.model import Target, Watcher, load, resolve
    from runyard.serving.server import bind, serve

    root = prepared
    project = Project(root)
    stages.train(project, CLASSICAL)
    assert stages.register(project, CLASSICAL).version == "1"

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
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(build_app(watcher), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        port = sock.getsockname()[1]
        wait_for(lambda: request(port, "/ping")[0] == 200, "answer on /ping", 30)
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
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
