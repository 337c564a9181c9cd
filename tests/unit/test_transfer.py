"""Transfer learning and unsupervised pretraining: a pipeline's ``init:``, ``subset:`` and
``task: reconstruction``; freezing, gradual unfreezing and per-module learning rates; the
denoising autoencoder and its evaluation; in-process learn tests on tiny configurations."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

from runyard import tasks
from runyard.config import Experiment
from runyard.data import builder, dataset_info
from runyard.data.augment import augment
from runyard.data.view import view_info, view_splits
from runyard.errors import RunyardError
from runyard.models import build_model
from runyard.models.transfer import layers, param_groups, part_of, source_state
from runyard.project import Project
from tests.conftest import assert_one_line_config_error
from tests.learning import untrained_vs_trained

CNN = {"name": "cnn2d", "channels": [8, 16]}
RECIPE = {"lr": 0.01, "batch_size": 32, "epochs": 2}


def write(project: Project, name: str, **sections) -> None:
    pipeline = {"dataset": "digits", "model": CNN, "recipe": RECIPE, **sections}
    project.pipeline_file(name).write_text(yaml.safe_dump(pipeline, sort_keys=False))


@pytest.fixture(scope="module")
def digits():
    return builder("digits").build(builder("digits").Args(), 0)


def exp_of(**sections) -> Experiment:
    return Experiment.model_validate({"name": "t", "dataset": "digits", "model": CNN, "recipe": RECIPE, **sections})


# --------------------------------------------------------------------------- the pipelines


def test_shipped_transfer_pipelines_load(project):
    target = project.experiment("digits_5to9_transfer")
    assert target.init.source == "digits_0to4_cnn" and target.init.part == "features"
    assert project.experiment_info(target).num_classes == 5
    dae = project.experiment("digits_dae")
    assert project.experiment_info(dae).task == "reconstruction"
    assert project.experiment("digits_few_dae_init").init.source == "digits_dae"
    assert set(project.params.experiments).isdisjoint({"digits_5to9_transfer", "digits_dae"})


INIT_CASES = [
    ({"from": "digits_cnnn"}, ["pipelines/t.yaml: init.from: unknown experiment 'digits_cnnn'", "digits_cnn"]),
    ({"from": "t"}, ["init.from: unknown experiment 't'"]),
    ({"from": "src", "part": "featurs"}, ["init.part: this model has no module 'featurs'", "all, features"]),
    ({"from": "src", "part": "features", "freeze": ["head.3"]},
     ["init.freeze: 'head.3' is not copied from src (init.part is 'features')"]),
    ({"from": "src", "part": "features", "freeze": ["feature"]},
     ["init.freeze: no module 'feature' in model cnn2d", "features.0"]),
    ({"from": "src", "lr_groups": {"heads": 0.1}}, ["init.lr_groups: no module 'heads'"]),
    ({"from": "src", "lr_groups": {"head": 0}}, ["init.lr_groups.head:", "greater than 0"]),
    ({"from": "src", "unfreeze_every": 2}, ["init: unfreeze_every needs modules listed under freeze"]),
    ({"from": "src", "fro": 1}, ["init.fro: unknown key", "from, part, freeze"]),
    ({"from": "mnist1d_cnn", "part": "features"}, ["init.part: 'features' of mnist1d_cnn", "does not fit"]),
    ({"from": "digits_svm_rbf"}, ["init.from: digits_svm_rbf is a scikit-learn model"]),
    ({"from": "wide", "part": "features"},
     ["init.part: 'features' of wide (pipelines/wide.yaml) does not fit this model",
      "features.0.weight is (32, 1, 3, 3) there and (8, 1, 3, 3) here"]),
]


@pytest.mark.parametrize("init,fragments", INIT_CASES)
def test_bad_init_is_one_line_naming_file_and_key(project, init, fragments):
    write(project, "src")
    write(project, "wide", model={"name": "cnn2d", "channels": [32, 16]})
    write(project, "t", init=init)
    assert_one_line_config_error(lambda: Project(project.root).experiment("t"), fragments)


def test_init_cycle_and_init_with_cv_are_refused(project):
    write(project, "a", init={"from": "b"})
    write(project, "b", init={"from": "a"})
    assert_one_line_config_error(lambda: project.experiment("a"), ["init.from: 'a' starts from 'b' in turn"])
    write(project, "c", init={"from": "b"}, cv={"folds": 2})
    write(project, "b")
    assert_one_line_config_error(lambda: project.experiment("c"), ["pipelines/c.yaml: init: not supported", "cv"])


def test_bad_subset_and_task(project):
    write(project, "t", subset={"classes": [3, 12]})
    assert_one_line_config_error(lambda: project.experiment("t"),
                                 ["pipelines/t.yaml: subset.classes: [12] not in digits", "0..9"])
    write(project, "t", subset={"classes": [3, 3]})
    assert_one_line_config_error(lambda: project.experiment("t"), ["subset.classes: classes repeat"])
    write(project, "t", dataset="regression1d", model={"name": "mlp"}, subset={"classes": [0, 1]},
          optimized_metric="val/mse")
    assert_one_line_config_error(lambda: project.experiment("t"), ["subset: needs a classification dataset"])
    write(project, "t", task="reconstruction", optimized_metric="val/mse")  # a classifier cannot rebuild images
    assert_one_line_config_error(lambda: project.experiment("t"), ["model: cnn2d gives outputs (1,)", "(1, 8, 8)"])
    write(project, "t", task="denoising")
    assert_one_line_config_error(lambda: project.experiment("t"), ["task:", "'reconstruction'"])


# --------------------------------------------------------------------------- the data view


def test_subset_relabels_and_caps_training_labels(digits):
    exp = exp_of(subset={"classes": [7, 5], "train_per_class": 4})
    s = view_splits(digits, exp)
    assert sorted(np.bincount(s.y_train).tolist()) == [4, 4] and set(s.y_val) == {0, 1}
    assert np.array_equal(s.x_train[s.y_train == 0], digits.x_train[digits.y_train == 7][:4])
    assert len(s.y_test) == int(np.isin(digits.y_test, [5, 7]).sum())
    assert view_info(dataset_info("digits"), exp).num_classes == 2


def test_reconstruction_targets_are_the_inputs(digits):
    exp = exp_of(task="reconstruction", model={"name": "conv_autoencoder"})
    s = view_splits(digits, exp)
    info = view_info(dataset_info("digits"), exp)
    assert s.y_val is s.x_val and tasks.get(info.task).output_shape(info) == (1, 8, 8)


def test_augment_moves_an_image_target_with_its_image_and_noises_the_input_only():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 8, 8)
    cfg = exp_of(recipe={**RECIPE, "augment": {"shift": 2, "rotate_deg": 20, "noise": 0.3}}).recipe.augment
    noisy, target = augment(x, x.clone(), cfg, torch.Generator().manual_seed(1))
    moved, _ = augment(x, x.clone(), cfg.model_copy(update={"noise": 0.0}), torch.Generator().manual_seed(1))
    assert torch.allclose(target, moved) and not torch.allclose(target, x)
    assert 0.2 < float((noisy - target).std()) < 0.4


# --------------------------------------------------------------------------- freezing, lr groups


def test_layers_are_conv_blocks_bottom_to_top():
    net = build_model(CNN, (1, 8, 8), 5)
    units = layers(net, ["head", "features"])
    assert [[type(m).__name__ for m in u] for u in units] == [
        ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"], ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"],
        ["AdaptiveAvgPool2d", "Flatten", "Dropout", "Linear"]]
    assert len(layers(net, ["features", "features.4"])) == 2 and len(layers(net, ["features.4"])) == 1


def test_param_groups_take_the_longest_prefix_and_keep_the_recipe_lr_first():
    net = build_model(CNN, (1, 8, 8), 5)
    groups = param_groups(net, 0.01, {"features": 0.1, "features.4": 0.5})
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.001), pytest.approx(0.005)]
    assert [len(g["params"]) for g in groups] == [2, 6, 2]  # head; conv 0, bn 1, bn 5; conv 4


def test_freeze_keeps_layers_fixed_then_unfreezes_from_the_top(digits, one_thread):
    """3 epochs, unfreeze_every 2: the bottom block never trains (nor its batch-norm
    statistics), the top block from epoch 2, the head throughout."""
    from runyard.execution.local import fit_local

    exp = exp_of(init={"from": "src", "part": "features", "freeze": ["features"], "unfreeze_every": 2},
                 subset={"classes": list(range(10)), "train_per_class": 10},
                 recipe={**RECIPE, "epochs": 3, "batch_size": 50})
    info = view_info(dataset_info("digits"), exp)
    torch.manual_seed(0)
    start = build_model(CNN, (1, 8, 8), 10).state_dict()
    seen = []

    class Watch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append({k: v.clone() for k, v in pl_module.net.state_dict().items()})

    trainer = fit_local(exp, info, view_splits(digits, exp), seed=0, cpus=1, callbacks=[Watch()],
                        init_state=part_of(start, "features"))
    unchanged = [{k for k in start if k.startswith("features") and torch.equal(s[k], start[k])} for s in seen]
    bottom = {k for k in start if k.startswith(("features.0.", "features.1."))}
    top = {k for k in start if k.startswith(("features.4.", "features.5."))}
    assert unchanged[1] == bottom | top  # epochs 0-1: all frozen, running statistics included
    assert unchanged[2] == bottom
    assert not torch.equal(seen[0]["head.3.weight"], start["head.3.weight"])
    assert float(trainer.callback_metrics["train/frozen_layers"]) == 1.0


def test_lr_groups_reach_the_optimizer_and_the_schedule():
    from runyard.execution.lightning import build_system

    exp = exp_of(init={"from": "src", "lr_groups": {"features": 0.1}},
                 recipe={**RECIPE, "lr": 0.02, "schedule": {"name": "step", "step_size": 1, "gamma": 0.5}})
    system = build_system(exp, dataset_info("digits").as_config())
    system.trainer = type("T", (), {"estimated_stepping_batches": 10})()
    cfg = system.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert [g["lr"] for g in opt.param_groups] == [0.02, pytest.approx(0.002)]
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.01, pytest.approx(0.001)]


# --------------------------------------------------------------------------- weights from models/<from>/


def test_source_state_reads_the_trained_part_and_refuses_a_stale_or_missing_source(project):
    from runyard.models import saved

    write(project, "src")
    write(project, "t", init={"from": "src", "part": "features"})
    exp = project.experiment("t")

    def source_state_of(exp):
        model_dir = project.model_dir(exp.init.source)
        return source_state(exp, project.experiment_info(exp), model_dir, project.rel(model_dir),
                            project.rel(project.pipeline_file(exp.init.source)))

    with pytest.raises(RunyardError, match=r"models/src: no trained model; run .*runyard train src"):
        source_state_of(exp)
    net = build_model(CNN, (1, 8, 8), 10)
    record = {"experiment": "src", "run_id": "r1", "model_uri": "models:/m", "model": CNN,
              "input_shape": [1, 8, 8], "num_outputs": 10, "task": "classification"}
    saved.save(project.model_dir("src"), net.state_dict(), record)
    state, source = source_state_of(exp)
    assert set(state) == set(part_of(net.state_dict(), "features")) and source["run_id"] == "r1"
    assert all(torch.equal(state[k], net.state_dict()[k]) for k in state)
    wide = build_model({"name": "cnn2d", "channels": [8, 32]}, (1, 8, 8), 10)
    saved.save(project.model_dir("src"), wide.state_dict(), record)
    with pytest.raises(RunyardError, match=r"features.4.weight is \(32, 8, 3, 3\) there.*runyard train src"):
        source_state_of(exp)


# --------------------------------------------------------------------------- the reconstruction evaluator


def test_reconstruction_evaluator_scores_and_draws_the_grid(digits, tmp_path):
    from runyard.tasks.reconstruction import DENOISE_NOISE

    exp = exp_of(task="reconstruction", model={"name": "conv_autoencoder"})
    s, info = view_splits(digits, exp), view_info(dataset_info("digits"), exp)
    identity = tasks.get("reconstruction").evaluate("dae", info, s, s.x_test, tmp_path, lambda x: x)
    assert identity["test/mse"] == 0 and identity["test/mse_noisy"] == pytest.approx(DENOISE_NOISE**2, rel=0.05)
    assert (tmp_path / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"
    blank = tasks.get("reconstruction").evaluate("dae", info, s, 0 * s.x_test, tmp_path, lambda x: 0 * x)
    assert blank["test/mse"] == pytest.approx(float((s.x_test**2).mean()))


# --------------------------------------------------------------------------- learning (in-process, tiny)


def train(exp: Experiment, splits, metric: str, init_state=None) -> tuple[float, float, torch.nn.Module]:
    """Validation ``metric`` of the model as it starts and after training (in-process Lightning),
    on the task and data the experiment sees (its ``subset:`` and ``task:``)."""
    info = view_info(dataset_info(exp.dataset), exp)
    start, end, learned = untrained_vs_trained(exp, info, view_splits(splits, exp), metric, init_state=init_state)
    return start, end, learned.net


DAE = {"name": "conv_autoencoder", "channels": [8, 16]}


def test_learn_transfer_from_digits_0_to_4_to_few_labels_of_5_to_9(digits, one_thread):
    source = exp_of(subset={"classes": [0, 1, 2, 3, 4]}, recipe={**RECIPE, "epochs": 4})
    _, src_acc, src_net = train(source, digits, "val/acc")
    # The bottom conv block (and its batch norm) stays as pretrained; the rest fine-tunes.
    target = exp_of(subset={"classes": [5, 6, 7, 8, 9], "train_per_class": 5},
                    init={"from": "src", "part": "features", "freeze": ["features.0", "features.1"],
                          "lr_groups": {"features": 0.3}},
                    recipe={**RECIPE, "epochs": 20, "batch_size": 25})
    before, after, net = train(target, digits, "val/acc", part_of(src_net.state_dict(), "features"))
    assert src_acc >= 0.9
    assert before < 0.5 <= after, (before, after)  # chance 0.2
    bottom = part_of(src_net.state_dict(), "features.0") | part_of(src_net.state_dict(), "features.1")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in bottom.items())


def test_learn_denoising_autoencoder_then_its_encoder_classifies_few_labels(digits, one_thread):
    dae = exp_of(task="reconstruction", model=DAE, optimized_metric="val/mse", optimized_mode="min",
                 recipe={**RECIPE, "epochs": 4, "batch_size": 64, "augment": {"noise": 0.3}})
    before, after, ae = train(dae, digits, "val/mse")
    assert after <= 0.05 < before, (before, after)  # pixel variance ~0.19; untrained ~0.1-0.3
    few = exp_of(subset={"classes": list(range(10)), "train_per_class": 5},
                 init={"from": "dae", "part": "features", "lr_groups": {"features": 0.3}},
                 recipe={**RECIPE, "epochs": 20, "batch_size": 25})
    before, after, _ = train(few, digits, "val/acc", part_of(ae.state_dict(), "features"))
    assert before < 0.3 <= after, (before, after)  # chance 0.1


def test_registry_builds_the_autoencoder_with_the_classifier_encoder():
    ae, cnn = build_model(DAE, (1, 8, 8), 1), build_model(CNN, (1, 8, 8), 10)
    assert {k: v.shape for k, v in part_of(ae.state_dict(), "features").items()} == \
           {k: v.shape for k, v in part_of(cnn.state_dict(), "features").items()}
    assert ae(torch.rand(2, 1, 8, 8)).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="divisible"):
        build_model({"name": "conv_autoencoder", "channels": [4, 4, 4, 4]}, (1, 8, 8), 1)


def test_init_keeps_its_yaml_spelling_when_dumped():
    """Ray workers rebuild the experiment from its dump; MLflow params read init.from."""
    exp = exp_of(init={"from": "x", "freeze": ["features"]})
    dumped = exp.model_dump(mode="json")
    assert dumped["init"]["from"] == "x" and Experiment.model_validate(json.loads(json.dumps(dumped))) == exp


def test_train_refuses_a_missing_source_model_before_writing_anything(project):
    """init.from names a real experiment that was never trained: one line naming what to
    run, before Ray, MLflow (no store created) or models/ are touched."""
    from runyard.commands.prepare import prepare
    from runyard.commands.train import train
    from tests.conftest import files_under

    prepare(project, "digits")
    before = files_under(project.root)
    assert_one_line_config_error(lambda: train(project, "digits_5to9_transfer"),
                                 ["models/digits_0to4_cnn: no trained model", "runyard train digits_0to4_cnn"])
    assert files_under(project.root) == before
