"""The docs site and the JSON Schemas stay true to the code.

The schemas in schemas/ are what runyard.schema generates now; every shipped pipeline
and params.yaml validates against them; the generated reference names every CLI verb
and every config key; and the site builds with warnings as errors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.conftest import REPO

REGENERATE = "regenerate them with `python -m runyard.schema` and commit schemas/"
PIPELINE_COMMENT = "# yaml-language-server: $schema=../schemas/pipeline.schema.json"
PARAMS_COMMENT = "# yaml-language-server: $schema=schemas/params.schema.json"


def _reference():
    """docs/hooks/reference.py, the mkdocs hook that writes the reference pages."""
    spec = importlib.util.spec_from_file_location("runyard_docs_reference", REPO / "docs/hooks/reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _committed(name: str) -> dict:
    path = REPO / "schemas" / name
    assert path.is_file(), f"{path.relative_to(REPO)} is missing: {REGENERATE}"
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("name", ["pipeline", "params"])
def test_committed_schema_is_what_the_config_models_generate(name):
    from runyard import schema

    generated = {"pipeline": schema.pipeline_schema, "params": schema.params_schema}[name]()
    committed = _committed(f"{name}.schema.json")
    assert committed == generated, f"schemas/{name}.schema.json is out of date with runyard.config: {REGENERATE}"
    Draft202012Validator.check_schema(committed)


def test_write_schemas_writes_the_committed_form(tmp_path):
    from runyard.schema import write_schemas

    written = write_schemas(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "schemas/params.schema.json", "schemas/pipeline.schema.json"]
    for path in written:
        assert path.read_text() == (REPO / "schemas" / path.name).read_text(), REGENERATE


def _errors(validator: Draft202012Validator, document) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}"
            for e in validator.iter_errors(document)]


def test_shipped_pipelines_validate_and_name_their_schema():
    validator = Draft202012Validator(_committed("pipeline.schema.json"))
    files = sorted((REPO / "pipelines").glob("*.yaml"))
    assert files
    for path in files:
        text = path.read_text()
        assert text.splitlines()[0] == PIPELINE_COMMENT, f"{path.name}: the first line must be {PIPELINE_COMMENT!r}"
        assert _errors(validator, yaml.safe_load(text) or {}) == [], path.name


def test_params_validates_and_names_its_schema():
    text = (REPO / "params.yaml").read_text()
    assert text.splitlines()[0] == PARAMS_COMMENT
    assert _errors(Draft202012Validator(_committed("params.schema.json")), yaml.safe_load(text)) == []


def test_pipeline_schema_refuses_what_runyard_refuses():
    validator = Draft202012Validator(_committed("pipeline.schema.json"))
    good = {"dataset": "mnist1d", "model": {"name": "cnn1d", "channels": [8]}, "recipe": {"lr": 0.01, "epochs": 2}}
    assert _errors(validator, good) == []
    bad = [
        {**good, "recipe": {"lr": -0.1, "epochs": 2}},            # out of range
        {**good, "recipe": {"optimiser": "adam", "epochs": 2}},   # unknown key
        {**good, "name": "x"},                                    # the name is the file's
        {"dataset": "mnist1d", "model": {"channels": [8]}},       # no model.name
        {"model": {"name": "cnn1d"}},                             # no dataset
        {**good, "search": {"space": {"recipe.lr": {"between": [0, 1]}}}},
    ]
    for document in bad:
        assert _errors(validator, document), document
    aliased = {**good, "search": {"space": {"recipe.batch_size": {"int": [32, 256]}}},
               "init": {"from": "mnist1d_mlp", "part": "all"}}
    assert _errors(validator, aliased) == []


def test_pipeline_schema_lets_an_extending_pipeline_say_only_what_changes():
    from runyard.config import Experiment

    if "extends" not in Experiment.model_fields:
        pytest.skip("pipelines have no extends: key")
    validator = Draft202012Validator(_committed("pipeline.schema.json"))
    assert _errors(validator, {"extends": "digits_reg_none", "recipe": {"weight_decay": 0.001}}) == []
    assert _errors(validator, {"extends": "digits_reg_none", "model": {"dropout": 0.3}}) == []
    assert _errors(validator, {"extends": "digits_reg_none", "recipe": {"lr": -1}})
    assert _errors(validator, {"extends": "digits_reg_none", "recipe": {"typo": 1}})


# --------------------------------------------------------------------------- the reference


def _verbs(command, path=()) -> list[tuple[str, ...]]:
    """Every command path of the click tree (``("cluster", "up")``, ...)."""
    found = []
    commands = getattr(command, "commands", {}) or {}
    for name, sub in commands.items():
        if getattr(sub, "hidden", False):
            continue
        found.append((*path, name))
        found += _verbs(sub, (*path, name))
    return found


def test_cli_reference_names_every_verb_and_option():
    import typer

    from runyard.cli import app

    text = _reference().cli_reference()
    root = typer.main.get_command(app)
    verbs = _verbs(root)
    assert ("train",) in verbs and ("cluster", "up") in verbs
    for path in verbs:
        assert f"## `runyard {' '.join(path)}`" in text, f"runyard {' '.join(path)} is not in the CLI reference"
        command = root
        for name in path:
            command = command.commands[name]
        for param in command.params:
            if param.name == "help" or getattr(param, "hidden", False):
                continue
            for opt in [*param.opts, *param.secondary_opts]:
                if opt.startswith("-"):
                    assert f"`{opt}`" in text, f"runyard {' '.join(path)} {opt} is not in the CLI reference"


def _keys(model, prefix: str = "") -> list[str]:
    """Every dotted key under a pydantic model (a ``dict[str, Model]`` key as ``<key>``)."""
    from pydantic import BaseModel

    def models_in(annotation):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [(annotation, "")]
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) is dict and args and isinstance(args[-1], type) \
                and issubclass(args[-1], BaseModel):
            return [(args[-1], ".<key>")]
        return [found for arg in args for found in models_in(arg)]

    keys = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        keys.append(key)
        for sub, between in models_in(field.annotation):
            keys += _keys(sub, f"{key}{between}.")
    return keys


def test_config_reference_names_every_key():
    from runyard.config import Experiment, Params

    text = _reference().config_reference()
    keys = _keys(Params) + [k for k in _keys(Experiment) if k != "name"]
    assert "recipe.lr" in keys and "ray.num_workers" in keys and "init.from" in keys
    missing = [k for k in keys if f"| `{k}` |" not in text]
    assert missing == [], f"not in the config reference: {missing}"
    assert "| `name` |" not in text.split("## pipelines/")[1], "a pipeline has no name: key (its file name is it)"


def test_reference_hook_fills_the_marked_pages():
    reference = _reference()
    for page, marker, sample in (("cli.md", reference.CLI_MARKER, "## `runyard train`"),
                                 ("config.md", reference.CONFIG_MARKER, "| `recipe.lr` |")):
        markdown = (REPO / "docs/reference" / page).read_text()
        assert marker in markdown
        filled = reference.on_page_markdown(markdown)
        assert marker not in filled and sample in filled


# --------------------------------------------------------------------------- the site


def test_site_builds_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[dev]'")
    result = subprocess.run(
        [mkdocs, "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    cli = (tmp_path / "site/reference/cli/index.html").read_text()
    config = (tmp_path / "site/reference/config/index.html").read_text()
    assert "runyard cluster up" in cli and "recipe.lr" in config
