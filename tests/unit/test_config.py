"""Configuration: every shipped file loads; every bad input is one precise line."""

from __future__ import annotations

import pytest
import yaml

from runyard.errors import RunyardError
from runyard.project import Project


def edit_yaml(path, change):
    data = yaml.safe_load(path.read_text()) or {}
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_every_shipped_pipeline_loads(project):
    names = project.experiment_names()
    assert set(project.params.experiments) <= set(names)
    for name in names:
        exp = project.experiment(name)
        assert exp.name == name
        assert exp.optimized_metric.startswith("val/")


def test_every_pipeline_is_a_dvc_stage_once(project):
    """Each pipelines/*.yaml is run by exactly one of the default run (dvc.yaml) and the
    catalogue (pipelines/catalogue/dvc.yaml), as a training or as a search."""
    listed = [name for mapping in project.params.dataset_maps().values() for name in mapping]
    assert sorted(listed) == project.experiment_names()
    for section, mapping in project.params.dataset_maps().items():
        for name in mapping:
            is_search = project.experiment(name).search is not None
            assert is_search == section.endswith("searches"), f"params.yaml: {section}.{name}"


def test_catalogue_stages_resolve_in_dvc(project_dir):
    """DVC itself (not our reading of params.yaml) sees one catalogue stage per experiment."""
    import subprocess
    import sys
    from pathlib import Path

    from runyard.project import Project

    dvc = Path(sys.executable).parent / "dvc"
    listed = subprocess.run([dvc, "stage", "list", "--all", "--fail", "--name-only"], cwd=project_dir,
                            capture_output=True, text=True, check=True).stdout.split()
    catalogue = Project(project_dir).params.catalogue
    prefix = "pipelines/catalogue/dvc.yaml:"
    for name in catalogue.experiments:
        assert {f"{prefix}{verb}@{name}" for verb in ("train", "evaluate", "register")} <= set(listed)
    assert {f"{prefix}tune@{name}" for name in catalogue.searches} <= set(listed)
    for name in catalogue.finetunes:
        verbs = ("finetune", "evaluate_finetune", "register_finetune")
        assert {f"{prefix}{verb}@{name}" for verb in verbs} <= set(listed)
    # The catalogue prepares its own data; the root dvc.yaml does not.
    assert catalogue.datasets and {f"{prefix}prepare@{name}" for name in catalogue.datasets} <= set(listed)
    assert not {f"prepare@{name}" for name in catalogue.datasets} & set(listed)


def test_defaults_are_the_embedded_setup(project):
    p = project.params
    assert p.ray.address is None and p.ray.use_gpu is False
    assert p.mlflow.tracking_uri == "sqlite:///mlruns/mlflow.db"


def test_digest_is_stable_and_sensitive(project):
    a = project.experiment("mnist1d_cnn")
    assert a.digest() == Project(project.root).experiment("mnist1d_cnn").digest()
    assert a.digest() != project.experiment("mnist1d_mlp").digest()


def set_in(*keys, value):
    def change(data):
        d = data
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value

    return change


def delete(*keys):
    def change(data):
        d = data
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]

    return change


PARAMS_CASES = [
    # (change, expected fragments of the one-line message)
    (set_in("ray", "num_worker", value=2), ["params.yaml: ray.num_worker: unknown key", "num_workers"]),
    (set_in("ray", "num_workers", value=0), ["params.yaml: ray.num_workers:", "greater than 0"]),
    (set_in("ray", "num_workers", value="two"), ["params.yaml: ray.num_workers:", "integer"]),
    (set_in("ray", "placement_strategy", value="SPRED"), ["ray.placement_strategy", "'SPREAD'"]),
    (set_in("mlflow", "retry_s", value=0), ["params.yaml: mlflow.retry_s:", "greater than 0"]),
    (set_in("datasets", "mnist2d", value={}), ["params.yaml: datasets.mnist2d: unknown dataset", "mnist1d"]),
    (set_in("datasets", "mnist1d", value={"num_sample": 5}),
     ["datasets.mnist1d: num_sample: unknown key", "num_samples"]),
    (set_in("datasets", "mnist1d", value={"num_samples": 5}), ["datasets.mnist1d: num_samples:", "100"]),
    (set_in("experiments", "nosuch", value="mnist1d"),
     ["params.yaml: experiments.nosuch: no file pipelines/nosuch.yaml", "mnist1d_cnn"]),
    (set_in("experiments", "mnist1d_cnn", value="digits"),
     ["experiments.mnist1d_cnn: says dataset 'digits'", "'mnist1d'"]),
    (set_in("catalogue", "experiments", "nosuch", value="mnist1d"),
     ["params.yaml: catalogue.experiments.nosuch: no file pipelines/nosuch.yaml", "mnist1d_cnn"]),
    (set_in("catalogue", "searches", "mnist1d_cnn", value="mnist1d"),
     ["params.yaml: catalogue.searches.mnist1d_cnn: pipelines/mnist1d_cnn.yaml has no search: section"]),
    (set_in("catalogue", "finetunes", "mnist1d_cnn", value={"dataset": "mnist1d", "from": "mnist1d_mlp"}),
     ["params.yaml: catalogue.finetunes.mnist1d_cnn.from: says 'mnist1d_mlp'", "init.from says None"]),
    (set_in("catalogue", "datasets", "shapes", value={"size": 4}),
     ["params.yaml: catalogue.datasets.shapes: size:", "greater than or equal to 8"]),
    (set_in("catalogue", "datasets", "karate", value={"label": 1}),
     ["params.yaml: catalogue.datasets.karate: label: unknown key", "labels_per_class"]),
    (set_in("datasets", "karate", value={}),
     ["params.yaml: catalogue.datasets.karate: also under datasets:", "both would write data/karate"]),
    (set_in("files", "graphs", value={"source": "data/raw/graphs.csv", "target": "y"}),
     ["params.yaml: files.graphs: also under catalogue.datasets:", "both would write data/graphs"]),
]


@pytest.mark.parametrize("change,expected", PARAMS_CASES)
def test_bad_params_are_one_line_naming_key(project, change, expected):
    edit_yaml(project.params_file, change)
    with pytest.raises(RunyardError) as err:
        Project(project.root).experiment("mnist1d_cnn")
    msg = str(err.value)
    assert "\n" not in msg
    for fragment in expected:
        assert fragment in msg


def test_catalogue_dataset_resolves_to_its_section(project):
    assert {"karate", "shapes_seg"} <= set(project.dataset_names())
    assert project.dataset_section("karate") == ({}, False, "params.yaml: catalogue.datasets.karate")
    assert project.dataset_section("mnist1d")[2] == "params.yaml: datasets.mnist1d"
    edit_yaml(project.params_file, set_in("catalogue", "datasets", "karate", value={"labels_per_class": 3}))
    fresh = Project(project.root)
    assert fresh.dataset_section("karate") == ({"labels_per_class": 3}, False, "params.yaml: catalogue.datasets.karate")
    assert fresh.dataset_args("karate").labels_per_class == 3


PIPELINE_CASES = [
    (set_in("recipe", "lr", value=-0.1), ["pipelines/mnist1d_cnn.yaml: recipe.lr:", "greater than 0", "-0.1"]),
    (set_in("recipe", "optimizer", value="adamm"), ["recipe.optimizer:", "'adam'", "'nesterov'"]),
    (set_in("recipe", "learning_rate", value=0.1), ["recipe.learning_rate: unknown key", "lr", "batch_size"]),
    (set_in("recipe", "epochs", value=3), ["exactly one of recipe.epochs and recipe.steps"]),
    (set_in("recipe", "batch_size", value="big"), ["recipe.batch_size:", "integer"]),
    (set_in("recipe", "schedule", value={"name": "cosin"}), ["recipe.schedule.name:", "'cosine'"]),
    (set_in("model", "name", value="transformr"), ["model.name: unknown model 'transformr'", "cnn1d"]),
    (set_in("model", "chanels", value=[8]), ["model: chanels: unknown key", "channels"]),
    (set_in("model", "dropout", value=1.5), ["model: dropout:", "less than 1"]),
    (set_in("dataset", value="cifar10"), ["dataset: unknown dataset 'cifar10'", "digits"]),
    (set_in("optimized_metric", value="val/f2"), ["optimized_metric: 'val/f2'", "val/acc"]),
    (set_in("optimized_mode", value="up"), ["optimized_mode:", "'max'"]),
    (delete("recipe"), ["recipe: required key is missing"]),
]


@pytest.mark.parametrize("change,expected", PIPELINE_CASES)
def test_bad_pipeline_is_one_line_naming_key(project, change, expected):
    edit_yaml(project.pipeline_file("mnist1d_cnn"), change)
    with pytest.raises(RunyardError) as err:
        project.experiment("mnist1d_cnn")
    msg = str(err.value)
    assert "\n" not in msg
    for fragment in expected:
        assert fragment in msg, msg


def test_unknown_experiment_lists_the_known_ones(project):
    with pytest.raises(RunyardError, match=r"no such experiment 'mnist1d_cmn'.*mnist1d_cnn"):
        project.experiment("mnist1d_cmn")


def test_invalid_yaml_names_file_and_line(project):
    project.pipeline_file("mnist1d_cnn").write_text("recipe: [unclosed\n")
    with pytest.raises(RunyardError, match=r"pipelines/mnist1d_cnn.yaml: not valid YAML \(line \d+\)"):
        project.experiment("mnist1d_cnn")


def test_not_a_project(tmp_path):
    with pytest.raises(RunyardError, match="not inside a runyard project"):
        Project.find(tmp_path)
