"""The course's lessons: random-label memorisation, FGSM, the sweep figure and the
regularisation ablation. Units first, then learn-tests: in-process Lightning on tiny
configurations, with thresholds an untrained net fails."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml

from runyard.config import Adversarial, Experiment, Recipe
from runyard.data import dataset_info, digits
from runyard.data.splits import Splits
from runyard.data.training import training_split
from runyard.evaluation import adversarial
from runyard.project import Project
from tests.conftest import assert_one_line_config_error

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- the training split


def toy_splits(n: int = 200) -> Splits:
    x = np.arange(n, dtype=np.float32)[:, None]
    y = (np.arange(n) % 10).astype(np.int64)
    return Splits(x, y, x[:20] + 0.5, y[:20].copy(), x[:30] + 0.25, y[:30].copy())


def recipe(**kw) -> Recipe:
    return Recipe(epochs=1, **kw)


def test_no_subset_no_noise_is_the_split_itself():
    s = toy_splits()
    assert training_split(s, recipe(), 0, 10) is s


def test_subset_keeps_true_pairs_and_is_seeded():
    s = toy_splits()
    a = training_split(s, recipe(train_samples=50), 0, 10)
    assert len(a.y_train) == len(a.x_train) == 50 and len(set(a.x_train[:, 0])) == 50
    assert np.array_equal(a.y_train, a.x_train[:, 0].astype(np.int64) % 10)  # pairs kept
    assert np.array_equal(a.x_train, training_split(s, recipe(train_samples=50), 0, 10).x_train)
    assert not np.array_equal(a.x_train, training_split(s, recipe(train_samples=50), 1, 10).x_train)
    for split in ("val", "test"):  # never touched
        assert getattr(a, f"x_{split}") is getattr(s, f"x_{split}")
        assert getattr(a, f"y_{split}") is getattr(s, f"y_{split}")


@pytest.mark.parametrize("noise", [0.3, 1.0])
def test_label_noise_redraws_that_fraction_of_training_labels_only(noise):
    s = toy_splits(2000)
    n = training_split(s, recipe(label_noise=noise), 0, 10)
    assert np.array_equal(n.x_train, s.x_train) and n.y_train is not s.y_train
    changed = (n.y_train != s.y_train).mean()
    # round(noise * n) labels redrawn uniformly: 9 in 10 of them land on another class.
    assert changed == pytest.approx(noise * 0.9, abs=0.03)
    assert set(np.unique(n.y_train)) == set(range(10))
    assert np.array_equal(s.y_train, np.arange(2000) % 10)  # the input is not modified
    assert n.y_val is s.y_val and n.y_test is s.y_test


@pytest.mark.parametrize(
    "extra,dataset,model,fragments",
    [
        ({"label_noise": 1.5}, "mnist1d", {"name": "mlp"}, ["recipe.label_noise:", "less than or equal to 1"]),
        ({"label_noise": 0.5}, "regression1d", {"name": "shallow"},
         ["recipe.label_noise: needs a classification dataset; regression1d is a regression dataset"]),
        ({"train_samples": 0}, "mnist1d", {"name": "mlp"}, ["recipe.train_samples:", "greater than 0"]),
    ],
)
def test_bad_recipe_data_options_are_one_line(project, extra, dataset, model, fragments):
    raw = {"dataset": dataset, "model": model, "recipe": {"epochs": 1, **extra}}
    project.pipeline_file("bad").write_text(yaml.safe_dump(raw))
    assert_one_line_config_error(lambda: Project(project.root).experiment("bad"),
                                 ["pipelines/bad.yaml: ", *fragments])


def test_more_train_samples_than_the_split_is_one_line(prepared):
    raw = {"dataset": "digits", "model": {"name": "cnn2d"}, "recipe": {"epochs": 1, "train_samples": 5000}}
    (prepared / "pipelines" / "big.yaml").write_text(yaml.safe_dump(raw))
    assert_one_line_config_error(lambda: Project(prepared).load_inputs("big"), [
        "pipelines/big.yaml: recipe.train_samples: 5000 is more than the", "training samples of digits"])


# --------------------------------------------------------------------------- FGSM


def test_fgsm_moves_every_input_by_epsilon_against_the_label():
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    x, y = torch.rand(8, 5), torch.randint(0, 3, (8,))
    assert torch.equal(adversarial.fgsm(net, x, y, 0.0), x)
    attacked = adversarial.fgsm(net, x, y, 0.1)
    assert torch.allclose((attacked - x).abs(), torch.full_like(x, 0.1))
    loss = torch.nn.functional.cross_entropy
    assert loss(net(attacked), y) > loss(net(x), y)
    clipped = adversarial.fgsm(net, x, y, 0.5, clip=(0.0, 1.0))
    assert clipped.min() >= 0 and clipped.max() <= 1 and not x.requires_grad


@pytest.mark.parametrize(
    "section,fragments",
    [
        ({"adversarial": {"epsilons": []}}, ["evaluate.adversarial.epsilons:", "at least 1"]),
        ({"adversarial": {"epsilons": [-0.1]}}, ["evaluate.adversarial.epsilons.0:", "greater than or equal to 0"]),
        ({"adversarial": {"epsilons": [0.1], "clip": [1, 0]}}, ["evaluate.adversarial.clip:", "inverted"]),
        ({"adversarial": {"epsilons": [0.1], "attack": "pgd"}}, ["evaluate.adversarial.attack:", "'fgsm'"]),
        ({"adversaria": {}}, ["evaluate.adversaria: unknown key; allowed: adversarial"]),
    ],
)
def test_bad_adversarial_section_is_one_line(project, section, fragments):
    raw = {"dataset": "digits", "model": {"name": "cnn2d"}, "recipe": {"epochs": 1}, "evaluate": section}
    project.pipeline_file("bad").write_text(yaml.safe_dump(raw))
    assert_one_line_config_error(lambda: Project(project.root).experiment("bad"), ["pipelines/bad.yaml: ", *fragments])


@pytest.mark.parametrize("dataset,model,why", [
    ("digits", {"name": "svm"}, "svm has no gradients"),
    ("regression1d", {"name": "shallow"}, "regression1d is a regression dataset"),
])
def test_adversarial_needs_a_deep_classifier(project, dataset, model, why):
    raw = {"dataset": dataset, "model": model, "evaluate": {"adversarial": {"epsilons": [0.1]}}}
    if model["name"] != "svm":
        raw["recipe"] = {"epochs": 1}
    project.pipeline_file("bad").write_text(yaml.safe_dump(raw))
    assert_one_line_config_error(lambda: Project(project.root).experiment("bad"),
                                 [f"pipelines/bad.yaml: evaluate.adversarial: needs a deep classifier; {why}"])


# --------------------------------------------------------------------------- learn-tests


def fit(dataset: str, splits: Splits, model: dict, recipe_: dict):
    """Train in-process (no Ray) as a one-worker trial does; the net in eval mode and its experiment."""
    from runyard.execution.local import fit_local

    exp = Experiment(name="learn", dataset=dataset, model=model, recipe=recipe_)
    trainer = fit_local(exp, dataset_info(dataset), splits, seed=0, cpus=1)
    return trainer.lightning_module.net.eval(), exp


def accuracy(net, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


@pytest.fixture(scope="module")
def small_mnist1d() -> Splits:
    from runyard.data import mnist1d

    return mnist1d.build(mnist1d.Args(num_samples=600, val_samples=100), seed=0)


# Measured on 1 thread, seed 0: the untrained net's accuracy on its random labels is ~0.1;
# after 40 epochs it is 1.0 on them, ~0.1 on the true test labels.
def test_random_labels_are_memorised_not_learnt(small_mnist1d):
    s = small_mnist1d
    net, exp = fit("mnist1d", s, {"name": "mlp", "hidden": [256, 256]},
                   {"lr": 0.005, "batch_size": 100, "epochs": 40, "train_samples": 100, "label_noise": 1.0})
    fitted = training_split(s, exp.recipe, 0, 10)
    assert (fitted.y_train != s.y_train[:1].repeat(100)).any()
    true_labels = {tuple(x): y for x, y in zip(s.x_train.tolist(), s.y_train.tolist(), strict=True)}
    agree = np.mean([true_labels[tuple(x)] == y for x, y in zip(fitted.x_train.tolist(), fitted.y_train.tolist(),
                                                               strict=True)])
    assert agree < 0.25  # the labels it fits really are random
    train, test = accuracy(net, fitted.x_train, fitted.y_train), accuracy(net, s.x_test, s.y_test)
    print(f"random labels: train acc {train:.3f}, test acc {test:.3f}")
    assert train >= 0.95 and test <= 0.2, (train, test)


@pytest.fixture(scope="module")
def digits_splits() -> Splits:
    return digits.build(digits.Args(), seed=0)


# The capacity sweep's lesson in small (pipelines/digits_capacity_sweep.yaml draws it whole): on 100
# digits a width-1 net fits 0.13-0.30 of its training set (seeds 0-2), a width-64 one 0.96-1.0
# in 12 epochs. An untrained net is at ~0.1 either way.
def test_capacity_decides_what_a_net_can_fit(digits_splits):
    fitted = {}
    for width in (1, 64):
        net, exp = fit("digits", digits_splits, {"name": "shallow", "width": width},
                       {"lr": 0.03, "batch_size": 100, "epochs": 12, "train_samples": 100})
        split = training_split(digits_splits, exp.recipe, 0, 10)
        fitted[width] = accuracy(net, split.x_train, split.y_train)
    print(f"train acc by width: {fitted}")
    assert fitted[64] >= 0.85 and fitted[64] - fitted[1] >= 0.4, fitted


# Measured on 1 thread, seed 0 (~4 s): clean test accuracy 0.95+, under FGSM at eps 0.2
# (a fifth of the pixel range) well below half of it; an untrained net is at ~0.1 clean.
def test_fgsm_breaks_a_trained_digits_cnn(digits_splits, tmp_path):
    s = digits_splits
    net, _ = fit("digits", s, {"name": "cnn2d", "channels": [16, 32]},
                 {"lr": 0.01, "batch_size": 64, "epochs": 6})
    cfg = Adversarial(epsilons=[0.0, 0.05, 0.2], clip=(0.0, 1.0))
    values = adversarial.evaluate("digits_cnn_fgsm", net, s.x_test, s.y_test, 10, cfg, tmp_path)
    assert list(values) == ["test/fgsm_acc/eps_0", "test/fgsm_acc/eps_0.05", "test/fgsm_acc/eps_0.2"]
    clean, small, large = values.values()
    print(f"fgsm: clean {clean:.3f}, eps 0.05 {small:.3f}, eps 0.2 {large:.3f}")
    assert clean == pytest.approx(accuracy(net, s.x_test, s.y_test))
    assert clean >= 0.9 and clean > small > large and large <= clean / 2, values
    rows = list(csv.DictReader((tmp_path / "fgsm.csv").open()))
    assert [float(r["epsilon"]) for r in rows] == [0.0, 0.05, 0.2]
    assert (tmp_path / "fgsm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # a fresh MLflow store (its schema migrations) and the evaluate stage: 10-30 s
def test_evaluate_stage_logs_fgsm_metrics_and_plot(prepared):
    """The evaluate stage of a pipeline with ``evaluate.adversarial``: metrics file, plots, MLflow."""
    import mlflow

    from runyard.commands.evaluate import evaluate
    from runyard.models import build_model
    from runyard.models import saved as saved_model
    from runyard.tracking.client import Tracking
    from runyard.tracking.uri import project_tracking_uri

    project = Project(prepared)
    exp = project.experiment("digits_cnn_fgsm")
    info = project.dataset_info("digits")
    # Untrained weights will do: this is about the stage's wiring (the learn-test is above).
    net = build_model(exp.model, info.input_shape, info.num_outputs)
    client = Tracking.of(project).client
    run = client.create_run(client.create_experiment("digits_cnn_fgsm"))
    saved_model.save(project.model_dir("digits_cnn_fgsm"), net.state_dict(), {
        "experiment": exp.name, "run_id": run.info.run_id, "model": exp.model,
        "input_shape": list(info.input_shape), "num_outputs": 10, "task": "classification"},
        extra_files={"history.csv": "epoch,train/loss,val/loss\n0,2.0,2.1\n1,1.0,1.1\n"})
    values = evaluate(project, "digits_cnn_fgsm")
    keys = {adversarial.metric_name(e) for e in exp.evaluate.adversarial.epsilons}
    assert keys <= set(values) and "test/acc" in values
    assert values["test/fgsm_acc/eps_0"] == pytest.approx(values["test/acc"])
    assert keys <= set(json.loads(project.metrics_file("digits_cnn_fgsm").read_text()))
    assert {"fgsm.png", "fgsm.csv"} <= {p.name for p in project.plots_dir("digits_cnn_fgsm").iterdir()}
    logged = mlflow.MlflowClient(project_tracking_uri(project)).get_run(run.info.run_id).data.metrics
    assert keys <= set(logged)


# --------------------------------------------------------------------------- the sweep figure


def test_sweep_plots_train_val_test_error_against_the_searched_key(tmp_path):
    from runyard.evaluation.tables import write_records
    from runyard.tuning.sweep import axes, error_of, plot

    exp = Experiment.model_validate({
        "name": "cap", "dataset": "mnist1d", "model": {"name": "shallow"}, "recipe": {"epochs": 2},
        "search": {"algorithm": "grid", "scheduler": "fifo", "space": {"model.width": {"grid": [2, 64]}}}})
    rows = [{"trial_id": t, "model.width": w, "outcome": "completed", "parameters": p,
             "train/acc": tr, "val/acc": va, "test/acc": te}
            for t, w, p, tr, va, te in (("a", 2, 112, 0.3, 0.25, 0.26), ("b", 64, 3274, 1.0, 0.4, 0.41))]
    assert axes(exp, rows) == ["model.width"] and error_of("acc", 0.25) == 0.75 and error_of("mse", 0.2) == 0.2
    plot(exp, rows, "acc", tmp_path / "sweep.png")
    write_records(rows, tmp_path / "sweep.csv")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [r["model.width"] for r in table] == ["2", "64"] and table[1]["test/acc"] == "0.41"
    # Lists (hidden layers) are not an axis: the parameter count is.
    lists = [{**r, "model.hidden": [r["model.width"]]} for r in rows]
    space = {"model.hidden": exp.search.space["model.width"]}
    exp2 = exp.model_copy(update={"search": exp.search.model_copy(update={"space": space})})
    assert axes(exp2, lists) == ["parameters"]


# --------------------------------------------------------------------------- the regularisation ablation

ABLATION = {
    "digits_reg_none": None,
    "digits_reg_l2": "recipe.weight_decay",
    "digits_reg_dropout": "model.dropout",
    "digits_reg_batchnorm": "model.batch_norm",
    "digits_reg_early_stopping": "recipe.early_stopping",
    "digits_reg_augment": "recipe.augment",
}


def settings(exp: Experiment) -> dict:
    from runyard.tracking.runs import flatten

    flat = flatten({"model": exp.model, "recipe": exp.recipe.model_dump(mode="json")})
    # A section set (early stopping, augmentation) shows as its own key, not only its leaves.
    return {**flat, **{f"recipe.{k}": json.dumps(v) for k, v in exp.recipe.model_dump(mode="json").items()
                       if isinstance(v, dict) or v is None}}


def test_ablation_changes_one_setting_at_a_time(project):
    base = settings(project.experiment("digits_reg_none"))
    for name, key in ABLATION.items():
        exp = project.experiment(name)
        assert exp.dataset == "digits" and exp.optimized_metric == "val/acc"
        diff = {k for k in base.keys() | settings(exp).keys() if base.get(k) != settings(exp).get(k)}
        assert (key is None and not diff) or key in diff, (name, diff)
        assert all(k == key or k.startswith(f"{key}.") for k in diff), (name, diff)


# Tiny versions (6 epochs on the pipelines' 200 images; ~3 s each): every variant trains, none
# stays near chance (0.1); augmentation learns slowest (0.49 after 6 epochs).
@pytest.mark.parametrize("name", list(ABLATION))
def test_every_ablation_variant_learns(project, digits_splits, name):
    exp = project.experiment(name)
    recipe_ = exp.recipe.model_dump(mode="json") | {"epochs": 6}
    net, _ = fit("digits", digits_splits, exp.model, recipe_)
    acc = accuracy(net, digits_splits.x_test, digits_splits.y_test)
    print(f"{name}: tiny test acc {acc:.3f}")
    assert acc >= 0.35, acc


def test_trial_count_expands_grids():
    from runyard.config import Search
    from runyard.tuning.results import trial_count

    grid = Search(algorithm="grid", scheduler="fifo", num_samples=2,
                  space={"model.width": {"grid": [1, 2, 4]}, "recipe.lr": {"choice": [0.1, 0.01]}})
    assert trial_count(grid) == 2 * 3 * 2
    tpe = Search(num_samples=5, space={"recipe.lr": {"choice": [0.1, 0.01]}})
    assert trial_count(tpe) == 5
