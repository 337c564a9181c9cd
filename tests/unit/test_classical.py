"""Classical (scikit-learn) models: strict one-line config errors; each family learns and round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from runyard.models import ALL_MODELS, CLASSICAL, MODELS, build_estimator, check_model_spec
from runyard.models import saved as saved_model
from runyard.models.classical import flatten
from runyard.project import Project
from tests.conftest import assert_one_line_config_error, files_under, one_line_error, runyard_cli


def edit_yaml(path, change):
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def model_set(**values):
    return lambda p: p["model"].update(values)


def top_set(**values):
    return lambda p: p.update(values)


# --------------------------------------------------------------------------- config errors

RF = "pipelines/mnist1d_random_forest.yaml"
CONFIG_CASES = [
    # (experiment, change, fragments of the one-line message)
    ("mnist1d_random_forest", model_set(n_estimator=10),
     [f"{RF}: model: n_estimator: unknown key; allowed:", "n_estimators", "max_depth", "max_features"]),
    ("mnist1d_random_forest", model_set(seed=3), [f"{RF}: model: seed: unknown key", "bootstrap"]),
    ("mnist1d_random_forest", model_set(n_estimators="many"),
     [f"{RF}: model: n_estimators: Input should be a valid integer", "'many'"]),
    ("mnist1d_random_forest", model_set(n_estimators=2.5), ["model: n_estimators:", "valid integer", "2.5"]),
    ("mnist1d_random_forest", model_set(max_depth=True), ["model: max_depth:", "valid integer", "True"]),
    ("mnist1d_random_forest", model_set(n_estimators=0), ["model: n_estimators: Input should be greater than 0",
                                                          "(got 0)"]),
    ("mnist1d_random_forest", model_set(max_features=1.5),
     [f"{RF}: model: max_features: must be 'sqrt', 'log2', a fraction in (0, 1] or null", "(got 1.5)"]),
    ("mnist1d_random_forest", model_set(criterion="ginni"), ["model: criterion:", "'gini'", "'log_loss'"]),
    ("digits_decision_tree", model_set(min_samples_split=1),
     ["pipelines/digits_decision_tree.yaml: model: min_samples_split:", "greater than or equal to 2"]),
    ("mnist1d_gradient_boosting", model_set(learning_rate=-0.1), ["model: learning_rate:", "greater than 0"]),
    ("mnist1d_gradient_boosting", model_set(max_features=0), ["model: max_features:", "greater than 0"]),
    ("digits_svm_rbf", model_set(kernel="rbff"), ["model: kernel:", "'rbf'", "'linear'", "'rbff'"]),
    ("digits_svm_rbf", model_set(gamma=-1), ["model: gamma: must be 'scale', 'auto' or a number > 0", "(got -1)"]),
    ("digits_svm_rbf", model_set(C="big"), ["model: C: Input should be a valid number", "'big'"]),
    ("digits_knn", model_set(weights="closest"), ["model: weights:", "'uniform'", "'distance'"]),
    ("digits_knn", model_set(n_neighbors=-5), ["model: n_neighbors:", "greater than 0", "-5"]),
    ("mnist1d_random_forest", model_set(name="random_forrest"),
     [f"{RF}: model.name: unknown model 'random_forrest'; allowed:", *ALL_MODELS]),
    ("mnist1d_random_forest", top_set(recipe={"lr": 0.1, "epochs": 3}),
     [f"{RF}: recipe: not used by random_forest, a scikit-learn model fitted in one go; remove the section"]),
    ("mnist1d_random_forest", top_set(recipe={}), [f"{RF}: recipe: not used by random_forest"]),
    ("mnist1d_random_forest", top_set(optimized_metric="val/loss"),
     [f"{RF}: optimized_metric: 'val/loss' is not logged for classical model random_forest; "
      "allowed: val/acc, train/acc"]),
    ("mnist1d_random_forest", top_set(dataset="regression1d"),
     [f"{RF}: model: random_forest is a classifier and regression1d is a regression dataset; "
      "allowed datasets: mnist1d, digits"]),
]


@pytest.mark.parametrize("name,change,expected", CONFIG_CASES)
def test_bad_classical_pipeline_is_one_line(project, name, change, expected):
    # Out of params.yaml's catalogue, whose dataset for it would disagree first.
    edit_yaml(project.params_file, lambda p: p["catalogue"]["experiments"].pop(name, None))
    edit_yaml(project.pipeline_file(name), change)
    assert_one_line_config_error(lambda: Project(project.root).experiment(name), expected)


def test_cli_refuses_a_bad_classical_pipeline_in_one_line(project_dir):
    edit_yaml(project_dir / RF, model_set(max_depth=0))
    before = files_under(project_dir)
    err = one_line_error(runyard_cli("train", "mnist1d_random_forest", cwd=project_dir))
    assert err == f"runyard: error: {RF}: model: max_depth: Input should be greater than 0 (got 0)"
    assert files_under(project_dir) == before


def test_deep_model_still_needs_a_recipe(project):
    edit_yaml(project.pipeline_file("mnist1d_cnn"), lambda p: p.pop("recipe"))
    assert_one_line_config_error(lambda: project.experiment("mnist1d_cnn"),
                                 ["pipelines/mnist1d_cnn.yaml: recipe: required key is missing"])


def test_every_model_name_is_deep_or_classical():
    assert set(ALL_MODELS) == set(MODELS) | set(CLASSICAL) and not set(MODELS) & set(CLASSICAL)


def test_defaults_are_filled_and_seed_is_injected():
    assert check_model_spec({"name": "random_forest", "n_estimators": 7}, where="m") == {
        "n_estimators": 7, "criterion": "gini", "max_depth": None, "min_samples_split": 2,
        "min_samples_leaf": 1, "max_features": "sqrt", "bootstrap": True,
    }
    est = build_estimator({"name": "svm", "kernel": "linear", "C": 2, "standardize": True}, seed=5)
    assert [type(s).__name__ for s in est] == ["StandardScaler", "SVC"]
    assert est[-1].get_params()["C"] == 2 and est[-1].random_state == 5


# --------------------------------------------------------------------------- each family learns

# Small but real settings: every fit below takes well under a second on digits.
LEARNS = [
    ({"name": "decision_tree", "min_samples_leaf": 2}, 0.6),
    ({"name": "random_forest", "n_estimators": 30}, 0.85),
    ({"name": "gradient_boosting", "max_iter": 20, "max_leaf_nodes": 8}, 0.8),
    ({"name": "svm", "kernel": "rbf", "C": 10, "gamma": 0.03}, 0.9),
    ({"name": "svm", "kernel": "linear", "standardize": True}, 0.85),
    ({"name": "knn", "n_neighbors": 3, "weights": "distance"}, 0.85),
    ({"name": "knn", "metric": "manhattan"}, 0.85),
]


@pytest.fixture(scope="module")
def small_digits():
    """400 training and 300 validation digits: chance is 0.1."""
    from runyard.data import builder

    digits = builder("digits")
    splits = digits.build(digits.Args(), seed=0)
    return splits.x_train[:400], splits.y_train[:400], splits.x_val[:300], splits.y_val[:300]


@pytest.mark.parametrize("spec,threshold", LEARNS, ids=lambda v: v if isinstance(v, float) else
                         "-".join(str(x) for x in v.values()))
def test_each_family_learns_and_round_trips(spec, threshold, small_digits, tmp_path):
    x, y, x_val, y_val = small_digits
    est = build_estimator(spec, seed=0).fit(flatten(x), y)
    pred = est.predict(flatten(x_val))
    assert (pred == y_val).mean() > threshold

    # Saved in the skops format and loaded with only the trusted types: same predictions.
    out = tmp_path / "models" / "exp"
    saved_model.save_estimator(out, est, {"run_id": "r", "model": spec, "num_outputs": 10})
    predict, record = saved_model.load_predictor(out, "models/exp")
    assert record["family"] == "classical"
    np.testing.assert_array_equal(predict(x_val).argmax(1), pred)
