"""Models: the MNIST-1D paper's sizes, shapes on every dataset, spec errors, init, systems, optim."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from runyard import tasks
from runyard.config import Recipe
from runyard.errors import RunyardError
from runyard.models import MODELS, build_model, check_model_spec
from runyard.models.optim import build_optimizer, build_schedule
from runyard.tasks.generation import GANSystem
from runyard.tasks.system import TaskSystem, build_system
from tests.conftest import assert_one_line_config_error


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# --------------------------------------------------------------------------- paper architectures


@pytest.mark.parametrize(
    "spec,expected",
    [
        ({"name": "mlp", "hidden": [100, 100]}, 15_210),
        ({"name": "mlp"}, 15_210),
        ({"name": "cnn1d"}, 5_210),
        ({"name": "rnn"}, 5_134),
        ({"name": "rnn", "cell": "gru", "hidden": 6, "bidirectional": True}, 5_134),
        ({"name": "logistic"}, 40 * 10 + 10),
        ({"name": "shallow", "width": 7}, 40 * 7 + 7 + 7 * 10 + 10),
    ],
)
def test_parameter_counts_on_mnist1d(spec, expected):
    assert n_params(build_model(spec, (40,), 10)) == expected


def test_rnn_variants_change_size():
    gru = n_params(build_model({"name": "rnn"}, (40,), 10))
    assert n_params(build_model({"name": "rnn", "cell": "lstm"}, (40,), 10)) > gru
    assert n_params(build_model({"name": "rnn", "bidirectional": False}, (40,), 10)) < gru


# --------------------------------------------------------------------------- shapes

MNIST1D, DIGITS, REGRESSION = ((40,), 10), ((1, 8, 8), 10), ((1,), 1)
SHAPES, SHAPES_SEG = ((1, 16, 16), 3), ((1, 16, 16), 4)
KARATE, GRAPHS = ((34, 70), 2), ((32, 50), 3)  # packed graphs: (N, N + F + 2)
COMPATIBLE = {
    "logistic": [MNIST1D, DIGITS, REGRESSION],
    "mlp": [MNIST1D, DIGITS, REGRESSION],
    "shallow": [MNIST1D, DIGITS, REGRESSION],
    "cnn1d": [MNIST1D],
    "cnn2d": [DIGITS, SHAPES],
    "rnn": [MNIST1D, REGRESSION],
    "transformer": [MNIST1D, REGRESSION],
    "tcn": [MNIST1D, REGRESSION],
    "unet": [DIGITS, SHAPES_SEG],
    "gcn": [KARATE, GRAPHS],
    "graph_mlp": [KARATE, GRAPHS],
    "conv_autoencoder": [DIGITS, SHAPES],
    "detr": [SHAPES, ((1, 32, 32), 3)],
}
SEGMENTERS = {"unet"}  # one score map per class: (num_outputs, height, width)
AUTOENCODERS = {"conv_autoencoder"}  # the input's own shape
DETECTORS = {"detr"}  # one row per query (6 by default): class scores + "no object", box
SHAPE_CASES = [(name, shape, n) for name, cases in COMPATIBLE.items() for shape, n in cases]


def test_shape_table_covers_every_model():
    from runyard.models import MODEL_TASKS  # generators take latent codes: tests/unit/test_gan.py

    assert set(COMPATIBLE) == set(MODELS) - set(MODEL_TASKS)


@pytest.mark.parametrize("name,input_shape,num_outputs", SHAPE_CASES)
def test_output_shape(name, input_shape, num_outputs):
    torch.manual_seed(0)
    net = build_model({"name": name}, input_shape, num_outputs)
    x = torch.randn(5, *input_shape)
    per_sample = (num_outputs, *input_shape[1:]) if name in SEGMENTERS else (num_outputs,)
    if name in AUTOENCODERS:
        per_sample = input_shape
    elif name in DETECTORS:
        per_sample = (6, num_outputs + 5)
    net.train()
    out = net(x)
    assert out.shape == (5, *per_sample)
    out.sum().backward()  # gradients reach every parameter
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    with torch.no_grad():
        assert net(x[:1]).shape == (1, *per_sample)


@pytest.mark.parametrize(
    "spec", [{"name": "mlp", "batch_norm": True, "dropout": 0.5, "activation": "gelu"},
             {"name": "cnn1d", "channels": [8, 8], "kernel_sizes": [3, 3], "batch_norm": True,
              "dropout": 0.2},
             {"name": "rnn", "cell": "lstm", "layers": 2, "dropout": 0.3}]
)
def test_options_keep_output_shape(spec):
    assert build_model(spec, (40,), 10)(torch.randn(4, 40)).shape == (4, 10)


def test_options_are_applied():
    mlp = build_model({"name": "mlp", "batch_norm": True, "dropout": 0.5, "activation": "tanh"},
                      (40,), 10)
    kinds = {type(m) for m in mlp.modules()}
    assert {nn.BatchNorm1d, nn.Dropout, nn.Tanh} <= kinds and nn.ReLU not in kinds
    cnn = build_model({"name": "cnn1d", "channels": [4, 6], "kernel_sizes": [3, 5]}, (40,), 10)
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [(4, 3), (6, 5)]


# --------------------------------------------------------------------------- spec errors


@pytest.mark.parametrize(
    "spec,fragments",
    [
        ({"name": "transformr"},
         ["p.yaml: model.name: unknown model 'transformr'; allowed:", *MODELS]),
        ({"hidden": [3]}, ["model.name: unknown model None", "mlp"]),
        ({"name": "cnn1d", "chanels": [8]},
         ["p.yaml: model: chanels: unknown key; allowed:", "channels", "kernel_sizes", "dropout",
          "batch_norm", "init"]),
        ({"name": "mlp", "hidden": "big"}, ["p.yaml: model: hidden:", "list", "'big'"]),
        ({"name": "mlp", "hidden": [100, 0]}, ["model: hidden.1:", "greater than 0"]),
        ({"name": "mlp", "dropout": 1.5}, ["p.yaml: model: dropout:", "less than 1", "1.5"]),
        ({"name": "mlp", "dropout": -0.1}, ["model: dropout:", "greater than or equal to 0"]),
        ({"name": "mlp", "activation": "swish"}, ["model: activation:", "'relu'", "'swish'"]),
        ({"name": "rnn", "cell": "transformer"}, ["model: cell:", "'gru'", "'lstm'"]),
        ({"name": "mlp", "init": "orthogonal"}, ["model: init:", "'xavier'", "'he'"]),
        ({"name": "cnn1d", "kernel_sizes": [5, 3, 16]}, ["model: kernel_sizes.2:", "15"]),
        ({"name": "mlp", "input_shape": [3]}, ["model: input_shape: unknown key"]),
        ({"name": "mlp", "num_outputs": 3}, ["model: num_outputs: unknown key"]),
    ],
)
def test_check_model_spec_errors(spec, fragments):
    assert_one_line_config_error(lambda: check_model_spec(spec, where="p.yaml: model"), fragments)


def test_check_model_spec_unknown_key_does_not_list_injected_args():
    with pytest.raises(RunyardError) as err:
        check_model_spec({"name": "mlp", "hiden": [3]}, where="m")
    msg = str(err.value)
    assert "hidden" in msg and "input_shape" not in msg and "num_outputs" not in msg


def test_check_model_spec_fills_defaults_and_coerces():
    kwargs = check_model_spec({"name": "cnn1d", "dropout": 0}, where="m")
    assert kwargs == {"channels": [25, 25, 25], "kernel_sizes": [5, 3, 3], "dropout": 0.0,
                      "batch_norm": False, "init": "default"}
    assert isinstance(kwargs["dropout"], float)


@pytest.mark.parametrize(
    "spec,dataset,fragment",
    [
        ({"name": "cnn1d", "channels": [8, 8], "kernel_sizes": [3]}, "mnist1d", "kernel_sizes"),
        ({"name": "cnn2d"}, "mnist1d", "does not fit mnist1d inputs of shape (40,)"),
        ({"name": "rnn"}, "digits", "does not fit digits inputs of shape (1, 8, 8)"),
        ({"name": "cnn1d"}, "regression1d", "does not fit regression1d inputs of shape (1,)"),
    ],
)
def test_model_that_does_not_fit_its_dataset_is_a_config_error(spec, dataset, fragment):
    from runyard.checks import check_model_fits
    from runyard.data import dataset_info

    with pytest.raises(RunyardError) as err:
        check_model_fits(spec, dataset_info(dataset), dataset, where="p.yaml: model")
    assert str(err.value).startswith("p.yaml: model: ") and fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_build_model_rejects_bad_spec_with_runyard_error():
    with pytest.raises(RunyardError, match="unknown key"):
        build_model({"name": "mlp", "hidden": [3], "widht": 2}, (40,), 10)


# --------------------------------------------------------------------------- init


def layers_of(net):
    return [m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]


@pytest.mark.parametrize("name,input_shape", [("mlp", (40,)), ("logistic", (40,)),
                                              ("cnn1d", (40,)), ("shallow", (40,))])
@pytest.mark.parametrize("scheme", ["xavier", "he"])
def test_init_changes_weights_and_zeroes_biases(name, input_shape, scheme):
    torch.manual_seed(0)
    default = build_model({"name": name}, input_shape, 10)
    torch.manual_seed(0)
    custom = build_model({"name": name, "init": scheme}, input_shape, 10)
    pairs = list(zip(layers_of(default), layers_of(custom), strict=True))
    assert pairs
    for d, c in pairs:
        assert not torch.equal(d.weight, c.weight)
        assert torch.count_nonzero(d.bias) > 0
        assert torch.count_nonzero(c.bias) == 0
        fan_out = c.weight.shape[0] * c.weight[0, 0].numel()
        fan_in = c.weight[0].numel()
        w = c.weight.detach()
        if scheme == "xavier":
            assert w.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-6
        elif w.numel() >= 1000:
            assert w.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.15)


def test_default_init_is_torch_default():
    torch.manual_seed(0)
    a = build_model({"name": "mlp"}, (40,), 10)
    torch.manual_seed(0)
    b = build_model({"name": "mlp", "init": "default"}, (40,), 10)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_rnn_init_reinitialises_the_head():
    torch.manual_seed(0)
    default = build_model({"name": "rnn"}, (40,), 10)
    torch.manual_seed(0)
    xavier = build_model({"name": "rnn", "init": "xavier"}, (40,), 10)
    assert not torch.equal(default.head.weight, xavier.head.weight)
    assert torch.count_nonzero(xavier.head.bias) == 0


def test_cnn2d_defaults_to_he_init():
    net = build_model({"name": "cnn2d"}, (1, 8, 8), 10)
    assert all(torch.count_nonzero(m.bias) == 0 for m in layers_of(net))


# --------------------------------------------------------------------------- systems


class Fixed(nn.Module):
    """Returns its input as the prediction (and has one parameter so optimisers work)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.w


def loss_and_metrics(system: TaskSystem, batch):
    """A training step's loss and metrics, as the system computes them for its net."""
    return system.task.loss_and_metrics(system.net, batch)


def test_classifier_loss_and_metrics():
    system = TaskSystem(Fixed(), {"epochs": 1}, "classification")
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])
    y = torch.tensor([0, 1, 0, 2])  # two right, two wrong
    loss, metrics = loss_and_metrics(system, (logits, y))
    assert set(metrics) == {"loss", "acc"}
    assert 0.0 <= metrics["acc"].item() <= 1.0
    assert metrics["acc"].item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item())
    assert loss.requires_grad and not metrics["loss"].requires_grad


def test_classifier_accuracy_bounds():
    system = TaskSystem(Fixed(), {"epochs": 1}, "classification")
    logits = torch.eye(4)
    assert loss_and_metrics(system, (logits, torch.arange(4)))[1]["acc"].item() == 1.0
    assert loss_and_metrics(system, (logits, (torch.arange(4) + 1) % 4))[1]["acc"].item() == 0.0


def test_regressor_loss_and_metrics():
    system = TaskSystem(Fixed(), {"epochs": 1}, "regression")
    pred, y = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([[1.0], [0.0], [1.0]])
    loss, metrics = loss_and_metrics(system, (pred, y))
    assert set(metrics) == {"loss", "mse"}
    assert loss.item() == pytest.approx((0 + 4 + 9) / 3)
    assert metrics["mse"].item() == pytest.approx(loss.item())


def test_system_for_task():
    def system(task: str):
        built = build_system(task, Fixed(), {"epochs": 1})
        return type(built), built.task

    assert system("classification") == (TaskSystem, tasks.get("classification"))
    assert system("regression") == (TaskSystem, tasks.get("regression"))
    assert system("segmentation") == (TaskSystem, tasks.get("segmentation"))
    gan = build_model({"name": "dcgan"}, (1, 8, 8), 10)
    assert type(build_system("generation", gan, {"epochs": 1})) is GANSystem


def test_system_validates_recipe():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        TaskSystem(Fixed(), {"epochs": 1, "steps": 10}, "classification")
    system = TaskSystem(Fixed(), {"epochs": 3, "optimizer": "sgd", "lr": 0.5}, "classification")
    assert system.recipe == Recipe(epochs=3, optimizer="sgd", lr=0.5)
    assert system.hparams["recipe"]["lr"] == 0.5


# --------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize(
    "name,cls,momentum,nesterov",
    [
        ("sgd", torch.optim.SGD, 0, False),
        ("momentum", torch.optim.SGD, 0.8, False),
        ("nesterov", torch.optim.SGD, 0.8, True),
        ("adam", torch.optim.Adam, None, None),
        ("adamw", torch.optim.AdamW, None, None),
        ("rmsprop", torch.optim.RMSprop, 0.8, None),
        ("adagrad", torch.optim.Adagrad, None, None),
    ],
)
def test_build_optimizer(name, cls, momentum, nesterov):
    params = list(nn.Linear(3, 2).parameters())
    recipe = Recipe(optimizer=name, lr=0.05, momentum=0.8, weight_decay=0.01, epochs=1)
    opt = build_optimizer(params, recipe)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.05 and group["weight_decay"] == 0.01
    assert group["params"] == params
    if momentum is not None:
        assert group["momentum"] == momentum
    if nesterov is not None:
        assert group["nesterov"] is nesterov


# --------------------------------------------------------------------------- schedules


def lrs_after_steps(schedule: dict, lr: float, steps: int, total_steps: int = 10):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_schedule(opt, Recipe(lr=lr, epochs=1, schedule=schedule), total_steps)
    if sched is None:
        return None, []
    out = []
    for _ in range(steps):
        opt.step()
        sched["scheduler"].step()
        out.append(opt.param_groups[0]["lr"])
    return sched, out


def test_constant_schedule_is_none():
    sched, _ = lrs_after_steps({"name": "constant"}, 1.0, 0)
    assert sched is None
    sched, _ = lrs_after_steps({}, 1.0, 0)
    assert sched is None


def test_step_schedule():
    sched, lrs = lrs_after_steps({"name": "step", "step_size": 2, "gamma": 0.5}, 1.0, 4)
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert sched["interval"] == "epoch"
    assert lrs == pytest.approx([1.0, 0.5, 0.5, 0.25])


def test_exponential_schedule():
    sched, lrs = lrs_after_steps({"name": "exponential", "gamma": 0.5}, 1.0, 3)
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.ExponentialLR)
    assert sched["interval"] == "epoch"
    assert lrs == pytest.approx([0.5, 0.25, 0.125])


def test_cosine_schedule_anneals_per_step_to_min_lr():
    sched, lrs = lrs_after_steps({"name": "cosine", "min_lr": 0.1}, 1.0, 10, total_steps=10)
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.CosineAnnealingLR)
    assert sched["interval"] == "step"
    assert sched["scheduler"].T_max == 10
    assert lrs[4] == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_cosine_schedule_with_no_steps_is_valid():
    sched, _ = lrs_after_steps({"name": "cosine"}, 1.0, 0, total_steps=0)
    assert sched["scheduler"].T_max == 1
