"""Sequence models on MNIST-1D: GRU, LSTM, transformer encoder and TCN.

Each pipeline's ``model:`` section builds, and each model learns: a few epochs of
plain in-process Lightning (no Ray) on a small MNIST-1D lift validation accuracy
well above what the same model scores untrained.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from runyard.checks import check_model_fits
from runyard.config import Experiment
from runyard.data import dataset_info
from runyard.errors import RunyardError
from runyard.models import build_model, check_model_spec
from tests.conftest import assert_one_line_config_error
from tests.learning import untrained_vs_trained

REPO = Path(__file__).resolve().parents[2]
PIPELINES = {
    "gru": "mnist1d_gru",
    "lstm": "mnist1d_lstm",
    "transformer": "mnist1d_transformer",
    "tcn": "mnist1d_tcn",
}
MNIST1D = dataset_info("mnist1d")


def pipeline(model: str) -> dict:
    """A shipped pipeline, read (never written) from the repository."""
    return yaml.safe_load((REPO / "pipelines" / f"{PIPELINES[model]}.yaml").read_text())


# --------------------------------------------------------------------------- building


@pytest.mark.parametrize("model", PIPELINES)
def test_pipeline_model_section_builds(model):
    torch.manual_seed(0)
    spec = pipeline(model)["model"]
    net = build_model(spec, MNIST1D.input_shape, MNIST1D.num_outputs)
    out = net(torch.randn(7, *MNIST1D.input_shape))
    assert out.shape == (7, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    check_model_fits(spec, MNIST1D, "mnist1d", where="x")


def test_pipelines_pick_the_intended_components():
    assert pipeline("gru")["model"] == {"name": "rnn", "cell": "gru", "hidden": 6, "bidirectional": True}
    assert pipeline("lstm")["model"]["cell"] == "lstm"
    assert pipeline("transformer")["model"]["name"] == "transformer"
    assert pipeline("tcn")["model"]["name"] == "tcn"
    for model in PIPELINES:
        assert pipeline(model)["dataset"] == "mnist1d"
        assert pipeline(model)["description"]


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "transformer", "pooling": "cls"},
        {"name": "transformer", "d_model": 30, "heads": 5, "layers": 1, "init": "xavier"},
        *({"name": "tcn", "kernel_size": k, "levels": 5, "dropout": 0.1} for k in range(2, 8)),
        {"name": "tcn", "channels": 8, "levels": 1, "init": "default"},
    ],
)
def test_options_keep_output_shape(spec):
    net = build_model(spec, (40,), 10)
    assert net.train()(torch.randn(3, 40)).shape == (3, 10)
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 40)).shape == (1, 10)


def test_tcn_keeps_the_signal_length_and_dilates():
    net = build_model({"name": "tcn", "kernel_size": 4, "levels": 3}, (40,), 10)
    assert net.blocks(torch.randn(2, 1, 40)).shape == (2, 32, 40)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv1d) and m.kernel_size == (4,)]
    assert [c.dilation[0] for c in convs] == [1, 1, 2, 2, 4, 4]
    # A 1x1 conv on the skip only where the width changes (1 -> 32 in the first block).
    assert [type(b.skip).__name__ for b in net.blocks] == ["Conv1d", "Identity", "Identity"]


def test_transformer_head_sees_every_step():
    """Mean pooling and [CLS] pooling both make the output depend on the last step."""
    for pooling in ("mean", "cls"):
        torch.manual_seed(0)
        net = build_model({"name": "transformer", "pooling": pooling, "dropout": 0.0}, (40,), 10).eval()
        x = torch.randn(1, 40)
        y = x.clone()
        y[0, -1] += 1.0
        with torch.no_grad():
            assert not torch.allclose(net(x), net(y))


def test_transformer_heads_must_divide_d_model_is_a_config_error():
    with pytest.raises(RunyardError) as err:
        check_model_fits({"name": "transformer", "d_model": 30, "heads": 4}, MNIST1D, "mnist1d", where="x")
    msg = str(err.value)
    assert msg.startswith("x: transformer does not fit mnist1d") and "divisible" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "spec,fragments",
    [
        ({"name": "tcn", "kernel_size": 8}, ["model: kernel_size:", "less than or equal to 7"]),
        ({"name": "tcn", "kernel_size": 1}, ["model: kernel_size:", "greater than or equal to 2"]),
        ({"name": "tcn", "levels": 0}, ["model: levels:", "greater than 0"]),
        ({"name": "transformer", "pooling": "max"}, ["model: pooling:", "'mean'", "'cls'"]),
        ({"name": "transformer", "dropout": 1.0}, ["model: dropout:", "less than 1"]),
        ({"name": "transformer", "head": 4}, ["model: head: unknown key", "heads", "d_model"]),
    ],
)
def test_bad_options_are_one_line(spec, fragments):
    assert_one_line_config_error(lambda: check_model_spec(spec, where="p.yaml: model"), fragments)


# --------------------------------------------------------------------------- learning

# 800 samples / batch 100 = 8 steps an epoch. A step of the 4-layer transformer costs
# 4-5x one of the others, so it gets fewer: the file must stay under ~40 s on busy cores.
LEARN_EPOCHS = {"gru": 15, "lstm": 15, "transformer": 8, "tcn": 12}
# Chance is 0.10. Measured over seeds 0-3 with these budgets: untrained 0.05-0.15 (one
# class everywhere often gives exactly 0.10); trained GRU 0.41-0.48, LSTM 0.39-0.42,
# transformer 0.345-0.38, TCN 0.395-0.485. The threshold sits in the middle of the gap.
THRESHOLD = 0.25


@pytest.fixture(scope="module")
def small_mnist1d():
    from runyard.data.mnist1d import Args, build

    return build(Args(num_samples=1000, val_samples=200), seed=0)


@pytest.mark.parametrize("model", PIPELINES)
def test_model_learns_mnist1d(model, small_mnist1d, one_thread):
    raw = pipeline(model)
    # The pipeline's model and optimiser, on a budget a unit test can afford.
    recipe = {k: v for k, v in raw["recipe"].items() if k not in ("steps", "epochs", "early_stopping")}
    exp = Experiment(name=PIPELINES[model], dataset="mnist1d", model=raw["model"],
                     recipe={**recipe, "epochs": LEARN_EPOCHS[model]})
    before, after, learned = untrained_vs_trained(exp, MNIST1D, small_mnist1d, "val/acc")
    assert learned.trainer.current_epoch == LEARN_EPOCHS[model]
    assert before < THRESHOLD <= after, (before, after)
