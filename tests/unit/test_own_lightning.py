"""A user's LightningModule as a pipeline's model: checked like an nn.Module, trained as its
own system, and its network read back from checkpoints and final weights.

The module lives in a throwaway package on ``sys.path``, as a project's ``labnets/`` would.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from runyard.config import Experiment
from runyard.data import DatasetInfo
from runyard.data.splits import Splits
from runyard.errors import RunyardError
from tests.conftest import assert_one_line_config_error

LIT = '''
import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F


class WineLit(pl.LightningModule):
    """Its own loss, metrics and optimiser; the network sits in ``self.net``, as in
    runyard's own systems, so a checkpoint's keys start with ``net.`` here too."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, hidden: int = 8, lr: float = 0.05,
                 log_val: bool = True):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(input_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, num_outputs))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        if self.hparams.log_val:
            self.log("val/acc", (self(x).argmax(1) == y).float().mean(), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class OneOutputLit(WineLit):
    def forward(self, x):
        return self.net(x)[:, :1]
'''

INFO = DatasetInfo(task="classification", input_shape=(4,), num_classes=3)


@pytest.fixture
def labnets(tmp_path, monkeypatch):
    """A package ``labnets_lit`` on sys.path holding ``lit.py``; unloaded afterwards."""
    import sys

    pkg = tmp_path / "labnets_lit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "lit.py").write_text(textwrap.dedent(LIT))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "labnets_lit.lit"
    for name in [n for n in sys.modules if n.startswith("labnets_lit")]:
        del sys.modules[name]


def experiment(model: dict, metric: str = "val/acc") -> Experiment:
    return Experiment.model_validate({
        "name": "wine_lit", "dataset": "wine", "model": model,
        "recipe": {"optimizer": "adam", "lr": 0.01, "batch_size": 16, "epochs": 2},
        "optimized_metric": metric, "optimized_mode": "max",
    })


def test_a_lightning_module_builds_with_its_signature_checked(labnets):
    from runyard.checks import check_model_fits
    from runyard.models import build_model, check_model_spec, component, is_lightning_model

    name = f"{labnets}:WineLit"
    assert is_lightning_model(name) and not is_lightning_model("mlp") and not is_lightning_model("torch.nn:Linear")
    assert component(name).__name__ == "WineLit"
    # Defaults filled, types coerced, the dataset's shapes not the pipeline's to set.
    assert check_model_spec({"name": name, "hidden": "16"}, where="model") == {"hidden": 16, "lr": 0.05,
                                                                                "log_val": True}
    assert_one_line_config_error(lambda: check_model_spec({"name": name, "width": 3}, where="model"),
                                 ["model", "width", "hidden"])
    assert_one_line_config_error(lambda: check_model_spec({"name": name, "hidden": "wide"}, where="model"),
                                 ["model", "hidden"])
    assert_one_line_config_error(lambda: check_model_spec({"name": name, "num_outputs": 3}, where="model"),
                                 ["model", "num_outputs"])
    net = build_model({"name": name, "hidden": 5}, INFO.input_shape, INFO.num_outputs)
    assert net.net[0].in_features == 4 and net.net[0].out_features == 5 and net.net[2].out_features == 3
    check_model_fits({"name": name}, INFO, "wine", where="model")
    assert_one_line_config_error(
        lambda: check_model_fits({"name": f"{labnets}:OneOutputLit"}, INFO, "wine", where="model"),
        ["OneOutputLit", "gives outputs (1,) per sample, wine needs (3,)"])


def test_it_is_its_own_system_and_its_own_network(labnets):
    from runyard.execution.lightning import build_system, network_of
    from runyard.tasks.system import TaskSystem

    system = build_system(experiment({"name": f"{labnets}:WineLit"}), INFO.as_config())
    assert type(system).__name__ == "WineLit" and network_of(system) is system
    ours = build_system(experiment({"name": "mlp", "hidden": [4]}), INFO.as_config())
    assert isinstance(ours, TaskSystem) and network_of(ours) is ours.net


def splits(seed: int = 0) -> Splits:
    rng = np.random.default_rng(seed)

    def part(n):
        x = rng.normal(size=(n, 4)).astype(np.float32)
        return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)

    return Splits(*part(48), *part(16), *part(16))


def test_it_trains_and_its_checkpoints_hold_its_own_weights(labnets, tmp_path, one_thread):
    from runyard.execution.checkpoints import net_weights
    from runyard.execution.local import fit_local
    from runyard.execution.trainer import FitResult, check_logged
    from runyard.models import build_model

    exp = experiment({"name": f"{labnets}:WineLit", "lr": 0.2})
    trainer = fit_local(exp, INFO, splits(), seed=0, cpus=1)
    assert trainer.current_epoch == 2 and 0 <= float(trainer.callback_metrics["val/acc"]) <= 1
    result = FitResult(trainer.lightning_module.state_dict(), {k: float(v) for k, v in
                                                                trainer.callback_metrics.items()})
    assert check_logged(exp, result) is result
    # Its `net.` keys are its own: read back whole, they load into a freshly built model.
    trainer.save_checkpoint(tmp_path / "state.ckpt")
    weights = net_weights(tmp_path / "state.ckpt")
    assert set(weights) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    fresh = build_model(exp.model, INFO.input_shape, INFO.num_outputs)
    fresh.load_state_dict(weights)
    assert torch.equal(fresh.net[2].weight, trainer.lightning_module.net[2].weight)


def test_a_module_that_does_not_log_the_optimized_metric_is_one_line(labnets, one_thread):
    from runyard.execution.local import fit_local
    from runyard.execution.trainer import FitResult, check_logged

    exp = experiment({"name": f"{labnets}:WineLit", "log_val": False})
    trainer = fit_local(exp, INFO, splits(), seed=0, cpus=1)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert "val/acc" not in metrics and "train/loss" in metrics
    with pytest.raises(RunyardError) as err:
        check_logged(exp, FitResult({}, metrics))
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"wine_lit: {labnets}:WineLit logged no 'val/acc'"), line
    assert "WineLit must log it, e.g. self.log('val/acc', ...)" in line, line
    # runyard's own systems log their task's metrics: the check is a user module's only.
    check_logged(experiment({"name": "mlp"}), FitResult({}, {}))
