"""Chaos: the tracking server SIGKILLed during train, evaluate, register and tune, and an
artifact store that refuses writes during `log_model`.

Real parts: `mlflow server` on a sqlite store (tests/services.py) killed with SIGKILL and
started again on the same port and store after ``OUTAGE_S``; the real `runyard` command
on a local Ray. Each stage either finishes with nothing lost (every epoch once, the model
logged, the version registered once) or fails in one line with nothing RUNNING, and then
succeeds when run again. Moments to kill at are found by polling the store's own file or
the stage's own files, never by sleeping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests import services
from tests.conftest import copy_project, runyard_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = 15
"""How long the server stays dead before it is started again. Its restart adds its own
start time (10-45 s on a loaded 2-core machine), so the stages see 25-60 s without it.
15, not 30: each of the four outages would otherwise add 15 s more to the suite."""
EXP = "regression1d_shallow"
EPOCHS = 40
SEARCH = "tiny_chaos_search"
SEARCH_EPOCHS = 6
TRIALS = 2
KEYS = ("train/loss", "train/mse", "train/lr", "val/loss", "val/mse")


class Server(services.RestartableMlflow):
    def outage(self, stage: subprocess.Popen | None = None) -> None:
        """Kill now, stay down ``OUTAGE_S``, start again. The stage must still be alive
        when the server is back (it waits; it does not fail at the first refusal)."""
        self.kill()
        deadline = time.monotonic() + OUTAGE_S
        while time.monotonic() < deadline:  # the outage itself: watch the stage meanwhile
            assert stage is None or stage.poll() is None, f"the stage died during the outage:\n{tail(stage)}"
            time.sleep(0.5)
        self.start()


def tail(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=60)
    return (out + err)[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("chaos-mlflow"))
    s.start()
    yield s
    services.stop(s.proc)


@pytest.fixture(scope="module")
def project(tmp_path_factory, _prepared_data) -> Path:
    """One project (params: a long ``retry_s``, a short training, a tiny search) for the
    train -> evaluate -> register chain and the search."""
    import shutil

    root = copy_project(tmp_path_factory.mktemp("chaos") / "project")
    shutil.copytree(_prepared_data, root / "data")
    configure(root, retry_s=600)
    pipe = root / "pipelines" / f"{EXP}.yaml"
    p = yaml.safe_load(pipe.read_text())
    p["recipe"]["epochs"] = EPOCHS
    pipe.write_text(yaml.safe_dump(p, sort_keys=False))
    (root / "pipelines" / f"{SEARCH}.yaml").write_text(yaml.safe_dump({
        "dataset": "mnist1d",
        "model": {"name": "mlp", "hidden": [16]},
        "recipe": {"optimizer": "adam", "lr": 0.01, "batch_size": 200, "epochs": SEARCH_EPOCHS},
        "optimized_metric": "val/acc",
        "search": {"algorithm": "random", "scheduler": "fifo", "num_samples": TRIALS, "max_concurrent": 1,
                   "space": {"recipe.lr": {"loguniform": [0.001, 0.05]}}},
    }))
    return root


def configure(root: Path, retry_s: float, artifact_root: str | None = None) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["mlflow"]["retry_s"] = retry_s
    if artifact_root is not None:
        params["mlflow"]["artifact_root"] = artifact_root
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def start(verb: str, name: str, root: Path, server: Server) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runyard", verb, name], cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "MLFLOW_TRACKING_URI": server.url})


def wait_for(ready, proc: subprocess.Popen, what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, f"ended before {what}:\n{tail(proc)}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s:.0f} s"
        time.sleep(0.1)


def nothing_running(server: Server) -> None:
    running = server.rows("select run_uuid, name from runs where status = 'RUNNING'")
    assert not running, f"runs left RUNNING: {running}"


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@dataclass
class Trained:
    returncode: int
    output: str
    down_at: float
    ended_at: float


@pytest.fixture(scope="module")
def trained(project, server) -> Trained:
    """`runyard train` with the server killed as soon as its run exists (the run's params,
    dataset input, the workers' first reads, their epochs and the model all come after)."""
    server.ensure_up()
    proc = start("train", EXP, project, server)
    wait_for(lambda: server.rows(f"select 1 from runs r join experiments e using (experiment_id) "
                                 f"where e.name = '{EXP}'"), proc, "run created")
    down_at = time.monotonic()
    server.outage(proc)
    out, err = proc.communicate(timeout=600)
    return Trained(proc.returncode, out + err, down_at, time.monotonic())


def test_train_rides_out_an_outage(trained, server, project):
    assert trained.returncode == 0, trained.output[-3000:]
    client = server.client()
    exp = client.get_experiment_by_name(EXP)
    (run,) = client.search_runs([exp.experiment_id])  # one run: nothing started twice
    assert run.info.status == "FINISHED"
    for key in KEYS:
        assert steps(client, run.info.run_id, key) == list(range(EPOCHS)), f"{key}: each epoch exactly once"
    assert run.data.params["recipe.epochs"] == str(EPOCHS)
    assert client.search_logged_models([exp.experiment_id]), "the model is logged"
    assert (project / "models" / EXP / "model.pt").is_file()
    nothing_running(server)


def test_evaluate_rides_out_an_outage(trained, server, project):
    assert trained.returncode == 0, "needs the training"
    server.ensure_up()
    proc = start("evaluate", EXP, project, server)
    # Its staging dir appears once it has read the model and the server answered its first
    # request; plotting takes seconds more before anything is logged.
    wait_for(lambda: any(project.glob(f".{EXP}-*")), proc, "evaluation staging dir", timeout_s=300)
    server.outage(proc)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, (out + err)[-3000:]
    client = server.client()
    (run,) = client.search_runs([client.get_experiment_by_name(EXP).experiment_id])
    test_keys = [k for k in run.data.metrics if k.startswith("test/")]
    assert test_keys and (project / "metrics" / f"{EXP}.json").is_file()
    for key in test_keys:
        assert steps(client, run.info.run_id, key) == [0], f"{key}: logged once"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}

    # Run again (as after a failure): the same metrics are not logged a second time.
    again = runyard_cli("evaluate", EXP, cwd=project, env={"MLFLOW_TRACKING_URI": server.url})
    assert again.returncode == 0, again.stderr[-3000:]
    for key in test_keys:
        assert steps(client, run.info.run_id, key) == [0], f"{key}: still once after a re-run"
    nothing_running(server)


def test_register_cut_between_version_and_alias_fails_in_one_line_then_reruns(trained, server, project,
                                                                              monkeypatch):
    """The server dies right after the model version is created, before its tag and the
    alias: past ``retry_s`` register fails in one line; run again once the server is back,
    it finishes the same version (no second one) and moves the alias."""
    from mlflow import MlflowClient

    from runyard.commands.register import register
    from runyard.project import Project
    from runyard.tracking.outage import TrackingUnavailable

    assert trained.returncode == 0, "needs the training"
    server.ensure_up()
    configure(project, retry_s=3)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.chdir(project)
    create = MlflowClient.create_model_version

    def create_then_lose_the_server(self, *args, **kwargs):
        version = create(self, *args, **kwargs)
        server.kill()  # a real SIGKILL of the real server, at this exact point
        return version

    monkeypatch.setattr(MlflowClient, "create_model_version", create_then_lose_the_server)
    start_s = time.monotonic()
    try:
        with pytest.raises(TrackingUnavailable) as failed:
            register(Project(project), EXP)
    finally:
        monkeypatch.setattr(MlflowClient, "create_model_version", create)
        configure(project, retry_s=600)
    line = str(failed.value)
    assert "\n" not in line and server.url in line and "params.yaml: mlflow.retry_s" in line, line
    assert time.monotonic() - start_s < 60, "fails soon after retry_s, does not hang"

    server.start()
    reg = register(Project(project), EXP)
    client = server.client()
    versions = client.search_model_versions(f"name='{EXP}'")
    assert [v.version for v in versions] == ["1"], "one version, not a second one"
    assert reg.version == "1" and reg.promoted
    assert client.get_model_version_by_alias(EXP, "champion").version == "1"
    assert reg.metric in client.get_model_version(EXP, "1").tags
    # Once more: nothing changes.
    assert register(Project(project), EXP).version == "1"
    assert len(client.search_model_versions(f"name='{EXP}'")) == 1
    nothing_running(server)


def test_tune_rides_out_an_outage(project, server):
    server.ensure_up()
    proc = start("tune", SEARCH, project, server)
    # The first child's first epoch is in the store: the search is under way.
    wait_for(lambda: server.rows("select 1 from metrics m join tags t on t.run_uuid = m.run_uuid "
                                 "where t.key = 'mlflow.parentRunId' and m.key = 'train/loss'"),
             proc, "a trial's first epoch", timeout_s=400)
    server.outage(proc)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, (out + err)[-3000:]

    client = server.client()
    runs = client.search_runs([client.get_experiment_by_name(SEARCH).experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("runyard.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert len(children) == TRIALS, "one child per trial"
    for child in children:
        assert child.info.status == "FINISHED", child.data.tags
        assert steps(client, child.info.run_id, "val/acc") == list(range(SEARCH_EPOCHS)), "each epoch once"
    assert "val/acc" in parent.data.metrics and client.search_logged_models([parent.info.experiment_id])
    versions = client.search_model_versions(f"name='{SEARCH}'")
    assert [(v.version, v.run_id) for v in versions] == [("1", parent.info.run_id)], "registered once"
    nothing_running(server)


def test_artifact_store_refusing_writes_fails_log_model_in_one_line(prepared):
    """The artifact store cannot be written (here: its path runs through a regular file, so
    every mkdir fails with ENOTDIR, for root too): one line, the run FAILED, no model saved
    and nothing to register."""
    from mlflow import MlflowClient

    (prepared / "not-a-dir").write_text("a file where the artifact store's directory should be\n")
    configure(prepared, retry_s=30, artifact_root="not-a-dir/artifacts")
    pipe = prepared / "pipelines" / f"{EXP}.yaml"
    p = yaml.safe_load(pipe.read_text())
    p["recipe"]["epochs"] = 3
    pipe.write_text(yaml.safe_dump(p, sort_keys=False))

    result = runyard_cli("train", EXP, cwd=prepared)
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("runyard: error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "logging the model to" in errors[0] and "Not a directory" in errors[0], errors[0]
    assert "mlflow.artifact_root" in errors[0], errors[0]

    uri = f"sqlite:///{prepared / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name(EXP).experiment_id])
    assert run.info.status == "FAILED"
    assert not (prepared / "models" / EXP).exists()
    reg = runyard_cli("register", EXP, cwd=prepared)
    assert reg.returncode == 2 and "no trained model" in reg.stderr, reg.stderr[-2000:]
    assert client.search_registered_models() == []
