"""The command server (runyard/forkserver.py): the real `runyard` script, a real server process.

A pipeline command is served by a child of the project's server (imports already done),
with the caller's arguments, working directory, environment, streams and exit code; a
signal to the caller reaches the command; `runyard local down` stops the server; another
import-time environment gets another server.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from runyard import forkserver

pytestmark = pytest.mark.integration

RUNYARD = str(Path(sys.executable).parent / "runyard")


def run(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([RUNYARD, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RUNYARD_WARM_CLI": "1", **(env or {})})


def servers(root: Path) -> list[dict]:
    out = []
    for info in forkserver.socket_dir().glob("*.json"):
        record = json.loads(info.read_text())
        if record["root"] == str(root.resolve()) and psutil.pid_exists(record["pid"]):
            out.append(record)
    return out


def test_commands_run_in_children_of_one_server_with_the_callers_streams_and_codes(project_dir):
    root = project_dir
    first = run("prepare", "regression1d", cwd=root)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "prepared data/regression1d" in first.stdout
    (server,) = servers(root)

    # The caller's working directory (a subfolder: the project is found above it) and environment.
    sub = root / "pipelines"
    bad = run("prepare", "nosuch", cwd=sub, env={"RUNYARD_TEST_MARK": "x"})
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "runyard: error: unknown dataset 'nosuch'; allowed: mnist1d, digits, regression1d, shapes, shapes_seg, "
        "shapes_det, karate, graphs"]
    assert servers(root) == [server], "the same server served the second command"

    # Served, not run in the caller: the caller imported none of the heavy libraries.
    probe = subprocess.run(
        [sys.executable, "-c", "import runpy, sys; sys.argv = [sys.argv[1], 'prepare', 'digits']\n"
         "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
         "print(sorted({'torch', 'mlflow', 'ray', 'lightning', 'typer'} & set(sys.modules)), code)",
         RUNYARD], cwd=root, capture_output=True, text=True, timeout=300,
        env={**os.environ, "RUNYARD_WARM_CLI": "1"})
    assert probe.stdout.splitlines()[-2:] == ["prepared data/digits", "[] 0"], probe.stdout + probe.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_signal_to_the_caller_reaches_the_command_and_down_stops_the_server(project_dir, sig):
    """SIGTERM is relayed to the command; a SIGKILLed caller closes its socket, and the
    command takes that as SIGTERM."""
    root = project_dir
    assert run("prepare", "mnist1d", cwd=root).returncode == 0
    (server,) = servers(root)
    # A training long enough to be interrupted.
    caller = subprocess.Popen([RUNYARD, "train", "mnist1d_cnn"], cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "RUNYARD_WARM_CLI": "1"})
    command = None
    deadline = time.monotonic() + 120
    while command is None and time.monotonic() < deadline:
        kids = psutil.Process(server["pid"]).children()
        command = kids[0] if kids else None
        time.sleep(0.2)
    assert command is not None, "no child of the server ran the training"

    def runs() -> list[str]:
        """The runs' statuses, read with sqlite (an MLflow client here would race the command's
        creation of the store)."""
        try:
            with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
                return [row[0] for row in db.execute("SELECT status FROM runs")]
        except sqlite3.Error:
            return []

    while not runs() and time.monotonic() < deadline:
        time.sleep(0.5)
    caller.send_signal(sig)
    out, _ = caller.communicate(timeout=120)
    # SIGTERM's 128 + 15 relayed from the command (Ray turns an exit inside ray.wait into 1).
    assert caller.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL), out[-2000:]
    psutil.wait_procs([command], timeout=30)
    assert not command.is_running()

    assert runs() == ["KILLED"]

    server_process = psutil.Process(server["pid"])
    down = run("local", "down", cwd=root)
    assert "command server down: stopped 1" in down.stdout, down.stdout + down.stderr
    _, alive = psutil.wait_procs([server_process], timeout=30)
    assert not alive and servers(root) == []


def test_another_import_time_environment_gets_another_server(project_dir):
    root = project_dir
    assert run("prepare", "regression1d", cwd=root).returncode == 0
    (before,) = servers(root)
    assert run("prepare", "regression1d", cwd=root, env={"OMP_NUM_THREADS": "1"}).returncode == 0
    (after,) = servers(root)  # the older one was told to stop
    assert after["pid"] != before["pid"]
    assert run("prepare", "regression1d", cwd=root, env={"RUNYARD_WARM_CLI": "0"}).returncode == 0
    assert servers(root) == [after], "RUNYARD_WARM_CLI=0 runs in the caller"
