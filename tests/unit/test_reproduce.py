"""`runyard reproduce` refuses what it cannot rebuild, in one line, before any work.

A real sqlite MLflow store in a throwaway project; registered versions whose runs
carry (or lack) lineage tags. The full reproduction runs in tests/e2e."""

from __future__ import annotations

import subprocess

import pytest

from runyard.errors import RunyardError
from runyard.tracking.lineage import git_state
from tests.conftest import assert_one_line_config_error, copy_project, one_line_error, runyard_cli

DATA_TAG = "runyard.data.mnist1d.md5"


@pytest.fixture(scope="module")
def _store(tmp_path_factory):
    """One throwaway project and its embedded store for the module; tests use their own model names."""
    from mlflow import MlflowClient
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from runyard.project import Project
    from runyard.tracking.uri import project_tracking_uri

    project = Project(copy_project(tmp_path_factory.mktemp("reproduce") / "project"))
    with pytest.MonkeyPatch.context() as mp:
        # Restore MLflow's process-wide URIs, and the variable set_registry_uri exports, afterwards.
        mp.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
        mp.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        uri = project_tracking_uri(project)
        yield project, MlflowClient(uri, registry_uri=uri)


@pytest.fixture
def store(_store, request):
    """(project, client, a model name of this test's own)."""
    project, client = _store
    return project, client, f"m{abs(hash(request.node.nodeid)) % 10**8}"


def head(project) -> str:
    return git_state(project.root)["runyard.git.commit"]


def lineage(project, **changes) -> dict[str, str]:
    tags = {"runyard.git.commit": head(project), "runyard.git.dirty": "false",
            DATA_TAG: "0123abcd.dir", "runyard.config.digest": "abc"}
    tags.update(changes)
    return {k: v for k, v in tags.items() if v is not None}


def registered(client, name: str, tags: dict[str, str], alias: str = "champion") -> str:
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name)
    run = client.create_run(exp_id, tags=tags)
    client.log_metric(run.info.run_id, "test/acc", 0.5)
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    mv = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias(name, alias, mv.version)
    return run.info.run_id


def refused(project, spec: str, *fragments: str) -> None:
    from runyard.commands.reproduce import reproduce

    assert_one_line_config_error(lambda: reproduce(project, spec), ["reproduce: ", *fragments])


@pytest.mark.parametrize("spec", ["mnist1d_cnn", "@champion", "mnist1d_cnn@", "a@b@c"])
def test_spec_must_be_model_at_alias(spec):
    from runyard.commands.reproduce import parse_spec

    assert_one_line_config_error(lambda: parse_spec(spec), [f"reproduce: {spec!r}: expected MODEL@ALIAS"])


def test_unknown_model_lists_the_registered_ones(store):
    project, client, name = store
    registered(client, name, lineage(project))
    refused(project, "nosuch@champion", "'nosuch': unknown registered model; registered: ", name)


def test_unknown_alias_lists_the_model_aliases(store):
    project, client, name = store
    registered(client, name, lineage(project))
    refused(project, f"{name}@best", f"model {name} has no alias 'best'; aliases: champion")


@pytest.mark.parametrize("missing", ["runyard.git.commit", DATA_TAG, "runyard.config.digest"])
def test_a_run_without_lineage_tags_is_refused(store, missing):
    project, client, name = store
    run_id = registered(client, name, lineage(project, **{missing: None}))
    refused(project, f"{name}@champion", f"(version 1, run {run_id}): no lineage tags")


def test_a_run_trained_with_uncommitted_changes_is_refused(store):
    project, client, name = store
    registered(client, name, lineage(project, **{"runyard.git.dirty": "true"}))
    refused(project, f"{name}@champion", f"trained at commit {head(project)[:12]} with uncommitted changes",
            "runyard.git.dirty=true")


def test_a_search_is_not_a_training(store):
    project, client, name = store
    registered(client, name, lineage(project, **{"runyard.kind": "search"}))
    refused(project, f"{name}@champion", "registered by a search")


def test_a_commit_missing_from_the_repository_is_refused(store):
    project, client, name = store
    registered(client, name, lineage(project, **{"runyard.git.commit": "f" * 40}))
    refused(project, f"{name}@champion", "commit ffffffffffff is not in this repository")


def test_the_cli_prints_one_line(store):
    project, client, name = store
    registered(client, name, lineage(project, **{"runyard.git.dirty": "true"}))
    line = one_line_error(runyard_cli("reproduce", f"{name}@champion", cwd=project.root))
    assert "with uncommitted changes" in line, line
    assert subprocess.run(["git", "worktree", "list"], cwd=project.root, capture_output=True,
                          text=True).stdout.count("\n") == 1


def test_dirty_ignores_what_dvc_repro_writes(project):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    (project.root / "dvc.lock").write_text("schema: '2.0'\n")
    (project.root / "metrics").mkdir()
    (project.root / "metrics" / "m.json").write_text("{}\n")
    subprocess.run([*git, "add", "dvc.lock", "metrics"], cwd=project.root, check=True)
    subprocess.run([*git, "commit", "-qm", "results"], cwd=project.root, check=True)
    (project.root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (project.root / "metrics" / "m.json").write_text('{"test/acc": 1}\n')
    assert git_state(project.root)["runyard.git.dirty"] == "false"
    with (project.root / "params.yaml").open("a") as f:
        f.write("# a change\n")
    assert git_state(project.root)["runyard.git.dirty"] == "true"


def test_tolerance_must_not_be_negative(store):
    from runyard.commands.reproduce import reproduce

    with pytest.raises(RunyardError, match="--tolerance: must be >= 0"):
        reproduce(store[0], "a@b", tolerance=-1)
