"""JSON Schemas of pipelines/*.yaml and params.yaml, generated from runyard.config.

Editors with the YAML language server validate and complete the files from them (each
file's first line names its schema). The committed copies live in schemas/; regenerate
them after changing the config models with ``python -m runyard.schema``.
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
import textwrap
import typing
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from runyard.config import Experiment, Params

DRAFT = "https://json-schema.org/draft/2020-12/schema"
PIPELINE_FILE = "schemas/pipeline.schema.json"
PARAMS_FILE = "schemas/params.schema.json"
MODEL_NAME_DOC = "A built-in model (logistic, mlp, cnn1d, ...) or an import path package.module:Attr."


def pipeline_schema() -> dict:
    """The schema of one pipelines/<name>.yaml: ``Experiment`` without ``name`` (the file name).

    A pipeline with ``extends:`` holds only what it changes (merged key by key onto its
    base), so it is checked against a copy of the schema in which nothing is required."""
    schema = _schema(Experiment, "runyard pipeline (pipelines/<name>.yaml)")
    defs = schema.pop("$defs", {})
    head = {k: schema.pop(k) for k in ("$schema", "title", "description") if k in schema}
    schema["properties"].pop("name", None)
    schema["required"] = [k for k in schema.get("required", []) if k != "name"]
    # model: is open (the component's own constructor arguments), but always names the component.
    model = schema["properties"]["model"]
    model["required"] = ["name"]
    model.setdefault("properties", {})["name"] = {"type": "string", "description": MODEL_NAME_DOC}
    if "extends" not in schema["properties"]:
        return {**head, **schema, "$defs": defs}
    partial = {f"Partial{name}": _partial(body) for name, body in defs.items()}
    return {
        **head,
        "$defs": {**defs, **partial, "Pipeline": schema, "PartialPipeline": _partial(schema)},
        "if": {"required": ["extends"], "properties": {"extends": {"type": "string"}}},
        "then": {"$ref": "#/$defs/PartialPipeline"},
        "else": {"$ref": "#/$defs/Pipeline"},
    }


def params_schema() -> dict:
    """The schema of params.yaml: ``Params``."""
    return _schema(Params, "runyard params.yaml")


def write_schemas(root: Path) -> list[Path]:
    """Write both schemas under ``root`` (the project); return the files written."""
    written = []
    for rel, schema in ((PIPELINE_FILE, pipeline_schema()), (PARAMS_FILE, params_schema())):
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(schema))
        written.append(path)
    return written


def dumps(schema: dict) -> str:
    """The committed form of a schema: stable key order, two-space indent, final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def field_docs(model: type[BaseModel]) -> dict[str, str]:
    """Each field's documentation: pydantic's description where set, else the attribute
    docstring under the field in the class source (inherited ones included)."""
    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls is not BaseModel:
            docs.update(_attribute_docstrings(cls))
    for name, field in model.model_fields.items():
        if field.description:
            docs[name] = field.description
    return {name: doc for name, doc in docs.items() if name in model.model_fields}


def nested_models(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from ``model``'s fields (itself included), by class name."""
    found: dict[str, type[BaseModel]] = {}

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp.__name__ in found:
                return
            found[tp.__name__] = tp
            for field in tp.model_fields.values():
                visit(field.annotation)
        for arg in typing.get_args(tp):
            visit(arg)

    visit(model)
    return found


# --------------------------------------------------------------------------- helpers


def _schema(model: type[BaseModel], title: str) -> dict:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.get("$defs", {})
    for name, cls in nested_models(model).items():
        target = schema if cls is model else defs.get(name)
        if target is not None:
            _describe(target, cls)
    return {"$schema": DRAFT, **schema, "title": title}


def _describe(schema: dict, model: type[BaseModel]) -> None:
    """Add each field's docstring to its property (editors show it on hover)."""
    docs = field_docs(model)
    props = schema.get("properties", {})
    for name, field in model.model_fields.items():
        prop = props.get(field.alias or name)
        if prop is not None and name in docs and "description" not in prop:
            prop["description"] = docs[name]
    if model.__doc__ and "description" not in schema:
        schema["description"] = inspect.cleandoc(model.__doc__)


def _partial(node: Any) -> Any:
    """A copy of a schema in which no key is required, its references to partial copies."""
    if isinstance(node, list):
        return [_partial(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "required" and isinstance(value, list):
            continue
        if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            value = "#/$defs/Partial" + value.removeprefix("#/$defs/")
        out[key] = _partial(value)
    return out


@cache
def _attribute_docstrings(cls: type) -> dict[str, str]:
    """``name: type = ...`` followed by a string literal, in the class body's source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = next((n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)), None)
    if body is None:
        return {}
    docs = {}
    for node, following in zip(body.body, body.body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _project_root(start: Path) -> Path:
    """The nearest directory at or above ``start`` holding params.yaml and pipelines/."""
    for folder in (start, *start.parents):
        if (folder / "params.yaml").is_file() and (folder / "pipelines").is_dir():
            return folder
    raise SystemExit(f"{start}: not inside a runyard project (no params.yaml and pipelines/ here or above)")


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else _project_root(Path.cwd().resolve())
    for path in write_schemas(root):
        print(f"wrote {path}")
