"""Generation: the DCGAN, the judge's numbers, the GAN system's sample grids in MLflow,
evaluation and registration of a generator, and in-process learning on the digits."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from runyard import tasks
from runyard.checks import check_model_fits, with_model_task
from runyard.config import Experiment, Recipe
from runyard.data import dataset_info, digits
from runyard.errors import RunyardError
from runyard.evaluation.judge import judge, quality
from runyard.models import build_model, model_inputs
from runyard.models.optim import build_optimizer
from runyard.project import Project
from tests.conftest import assert_one_line_config_error
from tests.learning import fit_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS = with_model_task("dcgan", dataset_info("digits"), "digits", "p.yaml: model")
TINY = {"name": "dcgan", "latent_dim": 16, "generator_channels": [32, 16], "discriminator_channels": [16, 32]}


@pytest.fixture(scope="module")
def splits():
    return digits.build(digits.Args(), seed=0)


@pytest.fixture
def tracking(tmp_path):
    """A real sqlite MLflow store; MLflow's process-wide URIs are restored afterwards."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
        mp.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
        yield uri


# --------------------------------------------------------------------------- the DCGAN


def test_dcgan_draws_images_from_latent_codes():
    net = build_model({"name": "dcgan"}, (1, 8, 8), 10)
    assert sum(p.numel() for p in net.generator.parameters()) == 42_049
    assert sum(p.numel() for p in net.discriminator.parameters()) == 33_697
    images = net.eval()(torch.randn(5, 32))
    assert images.shape == (5, 1, 8, 8) and images.min() >= 0 and images.max() <= 1  # sigmoid pixels
    assert net.discriminator(images).shape == (5,)  # one "real" logit per image
    big = build_model({"name": "dcgan", "generator_channels": [32, 16, 8]}, (3, 32, 32), 3)
    assert big(torch.randn(2, 32)).shape == (2, 3, 32, 32)


def test_generation_task_comes_from_the_model():
    assert DIGITS.task == "generation" and tasks.get(DIGITS.task).output_shape(DIGITS) == (1, 8, 8)
    check_model_fits({"name": "dcgan"}, DIGITS, "digits", where="p.yaml: model")
    assert with_model_task("cnn2d", dataset_info("digits"), "digits", "w") == dataset_info("digits")
    with pytest.raises(RunyardError) as err:
        with_model_task("dcgan", dataset_info("regression1d"), "regression1d", "p.yaml: model")
    assert str(err.value) == ("p.yaml: model: dcgan draws the images of a labelled image dataset and "
                              "regression1d is not one; allowed datasets: digits, shapes")
    with pytest.raises(RunyardError, match="discriminator_channels: 4 layers halve the side 4 times; "
                                           "8x8 images need a side divisible by 16"):
        check_model_fits({"name": "dcgan", "discriminator_channels": [8, 8, 8, 8]}, DIGITS, "digits", where="m")


def test_bad_gan_pipelines_are_one_line(project):
    import yaml

    good = yaml.safe_load(project.pipeline_file("digits_dcgan").read_text())
    path = project.pipeline_file("my_gan")  # not in params.yaml: its dataset may change
    cases = [
        ({"optimized_metric": "val/acc"}, ["optimized_metric: 'val/acc' is not logged", "val/inception_score"]),
        ({"recipe": {**good["recipe"], "gradient_clip": 1.0}}, ["recipe.gradient_clip: not supported by dcgan"]),
        ({"dataset": "shapes_seg"}, ["model: dcgan draws the images of a labelled image dataset"]),
        ({"model": {**good["model"], "latent_dim": 0}},
         ["model: latent_dim: Input should be greater than or equal to 1"]),
    ]
    for change, fragments in cases:
        path.write_text(yaml.safe_dump({**good, **change}))
        assert_one_line_config_error(lambda: Project(project.root).experiment("my_gan"),
                                     [f"pipelines/my_gan.yaml: {fragments[0]}", *fragments[1:]])


def test_adam_takes_momentum_as_beta1():
    recipe = Recipe(optimizer="adam", momentum=0.5, epochs=1)
    assert build_optimizer([torch.nn.Parameter(torch.zeros(1))], recipe).param_groups[0]["betas"] == (0.5, 0.999)
    assert Recipe(epochs=1).momentum == 0.9  # torch's default beta1: existing recipes are unchanged


# --------------------------------------------------------------------------- the judge's numbers


def test_judge_scores_real_digits_high_and_degenerate_samples_low(splits):
    j = judge(splits.x_train, splits.y_train)
    assert judge(splits.x_train.copy(), splits.y_train.copy()) is j  # fitted once per data
    train = torch.from_numpy(splits.x_train)
    real = quality(torch.from_numpy(splits.x_test), j, train)
    assert real["inception_score"] > 8 and real["confidence"] > 0.9
    assert real["class_entropy"] == pytest.approx(math.log(10), abs=0.01)  # stratified: every class alike
    copies = quality(train[:300], j, train)
    assert copies["nn_distance"] == 0.0  # memorised images sit on the training set
    one_class = torch.from_numpy(splits.x_train[splits.y_train == 3])
    collapsed = quality(one_class, j, train)  # confident, but a single mode
    assert collapsed["confidence"] > 0.9 and collapsed["inception_score"] < 1.5 and collapsed["class_entropy"] < 0.3
    blank = quality(torch.full((100, 1, 8, 8), 0.5), j, train)
    assert blank["inception_score"] == pytest.approx(1.0)


def test_generation_evaluator_compares_with_the_real_test_images(splits, tmp_path):
    values = tasks.get("generation").evaluate("g", DIGITS, splits, splits.x_test.copy(), tmp_path, None)
    names = ("inception_score", "confidence", "class_entropy", "nn_distance")
    assert set(values) == {f"test/{n}{s}" for n in names for s in ("", "_real")}
    assert all(values[f"test/{n}"] == values[f"test/{n}_real"] for n in names)
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- training, in MLflow


def tiny_experiment(epochs: int, lr: float = 0.002) -> Experiment:
    return Experiment(name="digits_dcgan", dataset="digits", model=TINY,
                      recipe={"lr": lr, "momentum": 0.5, "batch_size": 64, "epochs": epochs},
                      optimized_metric="val/inception_score")


def test_each_epoch_leaves_a_sample_grid_in_the_run_once(splits, tracking):
    from runyard.data.splits import Splits
    from runyard.tracking.epoch_logger import MlflowEpochLogger

    small = Splits(splits.x_train[:128], splits.y_train[:128], splits.x_val[:64], splits.y_val[:64],
                   splits.x_test[:8], splits.y_test[:8])
    client = mlflow.MlflowClient(tracking)
    run_id = client.create_run(client.create_experiment("gan")).info.run_id
    fit_tiny(tiny_experiment(epochs=2), DIGITS, small, callbacks=[MlflowEpochLogger(tracking, run_id, flush_every_s=0)])
    grids = [f.path for f in client.list_artifacts(run_id, "samples")]
    assert grids == ["samples/epoch_000.png", "samples/epoch_001.png"]
    metrics = client.get_run(run_id).data.metrics
    assert {"train/d_loss", "train/g_loss", "train/lr", "val/inception_score", "val/d_real"} <= set(metrics)
    png = client.download_artifacts(run_id, "samples/epoch_001.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A restarted worker re-trains epochs the store already has: neither metrics nor grids twice.
    fit_tiny(tiny_experiment(epochs=2), DIGITS, small, callbacks=[MlflowEpochLogger(tracking, run_id, flush_every_s=0)])
    assert [m.step for m in client.get_metric_history(run_id, "val/inception_score")] == [0, 1]
    assert len(client.list_artifacts(run_id, "samples")) == 2


# Measured over seeds 0-2 on 1 thread (8 epochs, ~10 s a fit on a loaded machine):
# untrained val inception score 1.00 (every image a flat grey), class entropy 1.05;
# trained 3.6-5.0 and 2.05-2.24 (real validation digits: ~8.7 and 2.30). The thresholds sit
# in the gaps.


def test_gan_learns_to_draw_digits(splits):
    learned = fit_tiny(tiny_experiment(epochs=8), DIGITS, splits, untrained=True)
    before, after = learned.before, learned.after
    print(f"inception score untrained {before['val/inception_score']:.2f}, trained {after['val/inception_score']:.2f}; "
          f"class entropy {before['val/class_entropy']:.2f} -> {after['val/class_entropy']:.2f}")
    assert before["val/inception_score"] < 2.5 <= after["val/inception_score"]
    assert before["val/class_entropy"] < 1.6 <= after["val/class_entropy"]


@pytest.mark.slow
def test_evaluate_and_register_a_generator(prepared, tracking):
    """A generator through the evaluate and register stages: test metrics and the sample
    grid in metrics/, plots/ and the run; the registered model draws digits from codes."""
    from runyard.commands.evaluate import evaluate
    from runyard.commands.register import register
    from runyard.commands.report import compare
    from runyard.commands.train import model_record
    from runyard.models import saved
    from runyard.tracking.client import Tracking
    from runyard.tracking.models import history_csv, log_pytorch_model
    from runyard.tracking.runs import ensure_experiment, tracked_run

    project = Project(prepared)
    exp, info, data = project.load_inputs("digits_dcgan")
    assert info.task == "generation"
    net = build_model(exp.model, info.input_shape, info.num_outputs).eval()
    client = Tracking.of(project).client
    exp_id = ensure_experiment(client, exp.name, str(prepared / "mlruns" / "artifacts"))
    with tracked_run(exp_id, exp.name, {}, {}) as run_id:
        model_uri = log_pytorch_model(net, data.x_test[:5])
        client.log_metric(run_id, "val/inception_score", 1.0, step=0)
    history = {"val/inception_score": [(0, 1.0)]}
    saved.save(project.model_dir(exp.name), net.state_dict(), model_record(project, exp, info, run_id, model_uri),
               extra_files={"history.csv": history_csv(history)})

    values = evaluate(project, exp.name)
    assert values["test/inception_score"] < 2 < 8 < values["test/inception_score_real"]  # untrained: flat grey
    assert (prepared / "plots" / exp.name / "samples.png").is_file()
    assert client.get_run(run_id).data.metrics["test/inception_score"] == values["test/inception_score"]
    assert "evaluation/samples.png" in {f.path for f in client.list_artifacts(run_id, "evaluation")}
    assert "| digits_dcgan | dcgan | inception_score " in compare(project, [exp.name], "t")

    reg = register(project, exp.name)
    assert reg.promoted and reg.metric == "val/inception_score" and reg.value == 1.0
    served = mlflow.pytorch.load_model(f"models:/{exp.name}@champion")
    codes = model_inputs(net, np.zeros((3, 1, 8, 8), np.float32))
    assert codes.shape == (3, 32)
    assert served(torch.from_numpy(codes)).shape == (3, 1, 8, 8)
