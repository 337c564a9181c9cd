"""A user's own model, the whole way: trained on a real 2-node Ray cluster, served, reproduced.

The model is a LightningModule in ``labnets/`` beside pipelines/ (docs/guides/own-data.md's
``WineLit``), on the wine CSV under DVC. In a throwaway project:

1. two `ray start` nodes on 127.0.0.x (token auth on); `dvc repro` with the cluster's
   address trains it with ``ray.num_workers: 2``, one Ray Train worker per node (DDP),
   evaluates it and registers it as ``wine_lit@champion``;
2. `runyard serve wine_lit@champion` in a fresh process answers a prediction, the one the
   trained weights give;
3. a fresh `git clone` of the project, its data pulled from the DVC remote by hash,
   `runyard reproduce wine_lit@champion` trains it again on the cluster: the same metrics.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import cluster_env, copy_project, ray_cluster, require_ray_cli, runyard_cli
from tests.integration.test_own_data import WINE_FILES, allow_raw_data, client, commit, dvc, ran, write_wine
from tests.integration.test_own_data import env as tool_env
from tests.integration.test_serve import request, stop_serving, wait_for
from tests.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "wine_lit"
# The guide's example, exactly, and a subclass saying where each worker trains.
LIT = '''\
import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F


class WineLit(pl.LightningModule):
    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, hidden: int = 32, lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(input_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, num_outputs))

    def forward(self, x):
        return self.net(x)  # the task's outputs: one logit per class

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean(), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class PlacedWineLit(WineLit):
    def on_fit_start(self):
        import ray

        print(f"labnets: rank {self.global_rank} of {self.trainer.world_size} "
              f"on {ray.util.get_node_ip_address()}", flush=True)
'''
PIPELINE = {
    "description": "The lab's own LightningModule on the wine CSV",
    "dataset": "wine",
    "model": {"name": "labnets.lit:PlacedWineLit", "hidden": 16, "lr": 0.02},
    "recipe": {"batch_size": 32, "epochs": 3},
    "optimized_metric": "val/acc",
    "optimized_mode": "max",
}
PLACED = re.compile(r"labnets: rank (\d) of 2 on ([\d.]+)")
SERVE_S = 180  # a deadline: a busy 2-core machine takes long to import torch and MLflow


def sh(*args, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """A command with this environment's tools (dvc, git) first on PATH; it must succeed."""
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**tool_env(), **(env or {})})
    assert done.returncode == 0, f"{args}: " + (done.stdout + done.stderr)[-4000:]
    return done


def add_wine_and_labnets(root: Path) -> None:
    """The guide's first steps: the wine CSV under DVC and the model in labnets/."""
    (root / "labnets").mkdir()
    (root / "labnets" / "__init__.py").write_text("")
    (root / "labnets" / "lit.py").write_text(LIT)
    allow_raw_data(root)
    write_wine(root)
    dvc("add", "data/raw/wine.csv", cwd=root)


def make_project(root: Path, remote: Path) -> None:
    """The guide's steps: the CSV under DVC, its files: entry, the model in labnets/, a DVC
    remote, 2 Ray Train workers on 2 nodes; committed."""
    add_wine_and_labnets(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params.update(files=WINE_FILES, datasets={}, experiments={NAME: "wine"}, searches={})
    params["ray"].update(num_workers=2, cpus_per_worker=1, placement_strategy="STRICT_SPREAD")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "pipelines" / f"{NAME}.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    dvcfile = yaml.safe_load((root / "dvc.yaml").read_text())
    dvcfile["stages"].pop("paper")  # reads experiments this project does not train
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvcfile, sort_keys=False))
    dvc("remote", "add", "-d", "storage", str(remote), cwd=root)
    commit(root, ".")


def test_a_users_lightning_module_trains_on_two_nodes_serves_and_reproduces_in_a_clone(tmp_path, monkeypatch):
    require_ray_cli()
    root = copy_project(tmp_path / "project")
    make_project(root, tmp_path / "dvc-remote")
    with ray_cluster(root, nodes=2) as state:
        env = cluster_env(state)
        done = sh(Path(sys.executable).parent / "dvc", "repro", cwd=root, env=env, timeout=900)
        assert {"prepare_files@wine", f"train@{NAME}", f"evaluate@{NAME}", f"register@{NAME}"} <= ran(done)
        # One Ray Train worker per node: rank 0 and rank 1 of 2, on the cluster's two addresses.
        placed = dict(PLACED.findall(done.stdout + done.stderr))
        assert set(placed) == {"0", "1"}, (done.stdout + done.stderr)[-4000:]
        assert set(placed.values()) == {n["ip"] for n in state["nodes"]}, (placed, state["nodes"])

        c = client(root)
        champion = c.get_model_version_by_alias(NAME, "champion")
        run = c.get_run(champion.run_id)
        assert run.info.status == "FINISHED" and run.data.params["ray.num_workers"] == "2"
        assert run.data.tags["runyard.ray.address"] == state["gcs_address"]
        assert run.data.tags["runyard.git.dirty"] == "false"
        # The module's own metrics, each epoch once (rank 0 logs), and the task's test metrics.
        history = sorted(m.step for m in c.get_metric_history(run.info.run_id, "val/acc"))
        assert history == [0, 1, 2], history
        assert "train/loss" in run.data.metrics and 0 <= run.data.metrics["test/acc"] <= 1

        # 2. Served by a fresh process: the trained weights' predictions for 3 wine rows.
        from runyard.models import saved

        monkeypatch.syspath_prepend(str(root))  # labnets, to rebuild the network here
        net, record = saved.load(root / "models" / NAME, f"models/{NAME}")
        assert record["model"]["name"] == "labnets.lit:PlacedWineLit"
        x = np.load(root / "data" / "wine" / "x_test.npy")[:3]
        import torch

        with torch.no_grad():
            expected = net(torch.from_numpy(x)).numpy()
        port = free_port()
        log = tmp_path / "serve.log"
        with log.open("w") as out:
            server = subprocess.Popen([sys.executable, "-m", "runyard", "serve", f"{NAME}@champion", "--port",
                                       str(port)], cwd=root, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: request(port, "/ping")[0] == 200, "answer on /ping", SERVE_S, server, log)
            status, body, _ = request(port, "/invocations", {"inputs": x.tolist()})
            assert status == 200, body
            assert np.asarray(body["predictions"]).shape == (3, 3)
            assert np.allclose(np.asarray(body["predictions"]), expected, atol=1e-5), (body, expected)
        finally:
            stop_serving(server)

        # 3. A fresh clone, its own empty DVC cache: the data comes from the remote by hash.
        sh(Path(sys.executable).parent / "dvc", "push", cwd=root)
        clone = tmp_path / "clone"
        sh("git", "clone", "-q", root, clone, cwd=tmp_path)
        assert not (clone / "data" / "wine").exists() and not (clone / ".dvc" / "cache").exists()
        reproduced = runyard_cli("reproduce", f"{NAME}@champion", cwd=clone, timeout=900,
                                 env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"})
        out = reproduced.stdout + reproduced.stderr
        assert reproduced.returncode == 0, out[-4000:]
        assert re.search(rf"reproduced {NAME} v{champion.version}: all \d+ metrics within 0.0001", out), out[-3000:]
    again = [r for r in c.search_runs([run.info.experiment_id])
             if r.data.tags.get("runyard.reproduction.of") == run.info.run_id]
    assert len(again) == 1
    for key in ("val/acc", "train/loss", "test/acc"):
        assert again[0].data.metrics[key] == pytest.approx(run.data.metrics[key], abs=1e-4), key
    assert again[0].data.params["ray.num_workers"] == "2"
    assert c.get_model_version_by_alias(NAME, "champion").version == champion.version
