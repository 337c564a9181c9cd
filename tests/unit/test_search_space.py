"""Search spaces: checked before any trial, turned into Tune domains, applied to trials."""

from __future__ import annotations

import pytest
import yaml

from runyard.errors import RunyardError
from runyard.tuning.space import apply, decode, tune_domains
from tests.conftest import assert_one_line_config_error

SEARCH = "mnist1d_cnn_search"


def with_search(project, **changes):
    path = project.pipeline_file(SEARCH)
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if key == "space":
            data["search"]["space"] = value
        else:
            data["search"][key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return lambda: project.experiment(SEARCH)


@pytest.mark.parametrize("changes, fragments", [
    ({"space": {"recipe.lr": {"uniform": [0.1, 0.01]}}},
     ["search.space.recipe.lr", "empty or inverted range [0.1, 0.01]"]),
    ({"space": {"recipe.lr": {"loguniform": [0.01, 0.01]}}}, ["search.space.recipe.lr", "low < high"]),
    ({"space": {"recipe.lr": {"choice": []}}}, ["search.space.recipe.lr.choice"]),
    ({"space": {}}, ["search.space"]),
    ({"space": {"recipe.lr": {"uniform": [0, 1], "choice": [1]}}}, ["give exactly one of"]),
    ({"space": {"recipe.lr": {"normal": [0, 1]}}}, ["search.space.recipe.lr.normal", "unknown key",
                                                    "uniform, loguniform, int, choice, grid"]),
    ({"algorithm": "bayes"}, ["search.algorithm", "'grid', 'random' or 'tpe'"]),
    ({"scheduler": "median"}, ["search.scheduler", "'fifo', 'asha', 'hyperband' or 'pbt'"]),
    ({"space": {"model.width": {"uniform": [0, 0.5]}}},
     ["search.space.model.width", "cnn1d takes no 'width'", "allowed: channels"]),
    ({"space": {"recipe.learning_rate": {"uniform": [0.1, 0.2]}}},
     ["search.space.recipe.learning_rate", "allowed: optimizer, lr"]),
    ({"space": {"lr": {"uniform": [0.1, 0.2]}}}, ["search.space.lr", "model.<argument>, recipe.<field>"]),
    ({"space": {"recipe.lr": {"uniform": [-1, 1]}}}, ["search.space.recipe.lr", "-1", "greater than 0"]),
    ({"space": {"recipe.optimizer": {"choice": ["adam", "lbfgs"]}}}, ["search.space.recipe.optimizer", "'lbfgs'"]),
    ({"space": {"recipe.lr": {"grid": [0.1, 0.2]}}}, ["grid values need algorithm grid or random"]),
    ({"max_concurrent": 0}, ["search.max_concurrent", "greater than 0"]),
])
def test_bad_search_is_one_line_before_any_trial(project, changes, fragments):
    assert_one_line_config_error(with_search(project, **changes), [f"pipelines/{SEARCH}.yaml: ", *fragments])


def test_a_search_needs_epochs(project):
    path = project.pipeline_file(SEARCH)
    data = yaml.safe_load(path.read_text())
    data["recipe"].pop("epochs")
    data["recipe"]["steps"] = 100
    path.write_text(yaml.safe_dump(data))
    assert_one_line_config_error(lambda: project.experiment(SEARCH), ["recipe.steps", "set recipe.epochs"])


def test_trial_values_apply_to_the_experiment(project):
    exp = project.experiment(SEARCH)
    trial = apply(exp, decode({"recipe.lr": 0.003, "model.channels": "[64, 64, 64]",
                               "recipe.schedule.name": "cosine"}, exp.search))
    assert trial.recipe.lr == 0.003 and trial.model["channels"] == [64, 64, 64]
    assert trial.recipe.schedule.name == "cosine" and exp.recipe.lr == 0.01  # the base is untouched
    with pytest.raises(RunyardError, match="lr"):
        apply(exp, {"recipe.lr": -0.1})


def test_tune_domains_cover_every_kind(project):
    from ray.tune.search.sample import Categorical, Float, Integer

    exp = with_search(project, space={
        "recipe.lr": {"loguniform": [0.001, 0.1]}, "recipe.momentum": {"uniform": [0.5, 0.9]},
        "recipe.batch_size": {"int": [32, 128]}, "model.channels": {"choice": [[8, 8, 8], [16, 16, 16]]},
    })()
    space = tune_domains(exp.search)
    assert isinstance(space["recipe.lr"], Float) and isinstance(space["recipe.momentum"], Float)
    assert isinstance(space["recipe.batch_size"], Integer)
    assert space["recipe.batch_size"].upper == 129, "int bounds are inclusive"
    assert isinstance(space["model.channels"], Categorical)
    assert space["model.channels"].categories == ["[8, 8, 8]", "[16, 16, 16]"]  # Optuna samples scalars
    grid = with_search(project, algorithm="grid", space={"recipe.lr": {"choice": [0.1, 0.01]}})()
    assert tune_domains(grid.search)["recipe.lr"] == {"grid_search": [0.1, 0.01]}
