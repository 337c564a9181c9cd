"""The reference pages, generated from the code each time the site is built.

``cli_reference()`` walks the `runyard` command (the Typer app ``runyard.cli.app`` as a
click command tree); ``config_reference()`` walks the pydantic models of params.yaml and
pipelines/*.yaml (``runyard.config.Params`` and ``runyard.config.Experiment``). As an
mkdocs hook, this module replaces the markers ``<!-- runyard:cli-reference -->`` and
``<!-- runyard:config-reference -->`` in a page with that text, so the reference cannot
drift from the code. tests/unit/test_docs.py calls both functions directly.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import types
import typing
from typing import Any

CLI_MARKER = "<!-- runyard:cli-reference -->"
CONFIG_MARKER = "<!-- runyard:config-reference -->"


# --------------------------------------------------------------------------- mkdocs hook


def on_page_markdown(markdown: str, page: Any = None, config: Any = None, files: Any = None, **_: Any) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference())
    return markdown


# --------------------------------------------------------------------------- the CLI


def cli_commands() -> list[tuple[list[str], Any, Any]]:
    """Every command of `runyard`, depth first: (path of verbs, command, its context)."""
    import typer

    from runyard.cli import app

    root = typer.main.get_command(app)
    found = []

    def walk(command, path, parent):
        ctx = command.context_class(command, info_name=path[-1] if path else "runyard", parent=parent)
        found.append((path, command, ctx))
        if hasattr(command, "list_commands"):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None and not getattr(sub, "hidden", False):
                    walk(sub, [*path, name], ctx)

    walk(root, [], None)
    return found


def cli_reference() -> str:
    """Markdown for every verb: its help, usage, arguments and options."""
    out = []
    for path, command, ctx in cli_commands():
        is_group = hasattr(command, "list_commands")
        title = " ".join(["runyard", *path])
        out.append(f"## `{title}`\n" if path else "## `runyard`\n")
        if command.help:
            out.append(_help_text(command.help) + "\n")
        params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False) and p.name != "help"]
        arguments = [p for p in params if _is_argument(p)]
        options = [p for p in params if not _is_argument(p)]
        usage = [title, "[OPTIONS]" if options or not path else ""]
        usage += [_argument_name(p) for p in arguments]
        if is_group:
            usage.append("COMMAND [ARGS]...")
        out.append("```text\n" + " ".join(u for u in usage if u) + "\n```\n")
        if is_group:
            subs = [(name, command.get_command(ctx, name)) for name in command.list_commands(ctx)]
            out.append("| command | what it does |\n|---|---|")
            out += [f"| [`{title} {name}`](#{_anchor(f'{title} {name}')}) | {_cell(_short_help(sub))} |"
                    for name, sub in subs if sub is not None and not getattr(sub, "hidden", False)]
            out.append("")
        if arguments:
            out.append("| argument | type | required | description |\n|---|---|---|---|")
            out += [f"| `{_argument_name(p)}` | {_cell(_param_type(p))} | {'yes' if p.required else 'no'} "
                    f"| {_cell(p.help or '')} |" for p in arguments]
            out.append("")
        if options:
            out.append("| option | type | default | description |\n|---|---|---|---|")
            out += [f"| {_option_names(p)} | {_cell(_param_type(p))} | {_option_default(p, ctx)} "
                    f"| {_cell(p.help or '')} |" for p in options]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _is_argument(param) -> bool:
    return getattr(param, "param_type_name", "") == "argument" or type(param).__name__.endswith("Argument")


def _argument_name(param) -> str:
    name = param.metavar or param.name.upper()
    return name + ("..." if param.nargs == -1 else "")


def _option_names(param) -> str:
    return " / ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])


def _param_type(param) -> str:
    if getattr(param, "is_flag", False) and not param.secondary_opts:
        return "flag"
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    text = _type_name(annotation) if annotation is not None else str(getattr(param, "type", ""))
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None or high is not None:
        text += f" ({'' if low is None else f'{low} <= '}x{'' if high is None else f' <= {high}'})"
    return text


def _option_default(param, ctx) -> str:
    if param.required:
        return "required"
    value = param.get_default(ctx) if hasattr(param, "get_default") else param.default
    if value is None or (getattr(param, "is_flag", False) and value is False and not param.secondary_opts):
        return "—"
    if isinstance(value, bool) and param.secondary_opts:
        return f"`{param.opts[0] if value else param.secondary_opts[0]}`"
    if isinstance(value, list | tuple):
        return ", ".join(f"`{v}`" for v in value)
    return f"`{value}`"


def _short_help(command) -> str:
    text = inspect.cleandoc(command.short_help or command.help or "")
    return " ".join(text.split("\n\n")[0].split()).split(" Example: ")[0]


def _help_text(text: str) -> str:
    """A docstring as markdown paragraphs, an 'Example: ...' at a paragraph's end as code."""
    paragraphs = []
    for para in inspect.cleandoc(text).split("\n\n"):
        para = " ".join(para.split())
        head, sep, example = para.partition("Example: ")
        if sep and "`" not in example:
            para = f"{_escape(head)}Example: {_code_example(example.strip())}"
        else:
            para = _escape(para)
        paragraphs.append(para)
    return "\n\n".join(paragraphs)


def _code_example(example: str) -> str:
    """``a (then: b)``, ``a, then b`` and ``a; b`` with each command as code."""
    tail = ""
    match = re.fullmatch(r"(.*?)\s*\((then|or): (.*)\)", example)
    if match:
        example, tail = match.group(1), f" ({match.group(2)}: `{match.group(3)}`)"
    parts = re.split(r"(, then |; )", example)
    return "".join(p if i % 2 else f"`{p}`" for i, p in enumerate(parts)) + tail


# --------------------------------------------------------------------------- params.yaml and pipelines


def config_fields(model, prefix: str = "", skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every key under ``model``, depth first: dotted key, type, default, description.

    Sections (nested models) are followed, also inside ``X | None`` and ``dict[str, X]``
    (the dict's keys appear as ``<key>``)."""
    from runyard.schema import field_docs

    docs = field_docs(model)
    rows = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        key = f"{prefix}{field.alias or name}"
        section, under = _section_of(field.annotation)
        doc = docs.get(name) or (inspect.cleandoc(section.__doc__) if section is not None and section.__doc__ else "")
        rows.append({"key": key, "type": _type_name(field.annotation) + _constraints(field.metadata),
                     "default": _default(field), "description": doc, "section": section is not None})
        if section is not None:
            rows += config_fields(section, f"{key}{under}.")
    return rows


def config_reference() -> str:
    """Markdown tables of every key of params.yaml and of a pipeline file."""
    from runyard.config import Experiment, Params

    out = [
        "## params.yaml\n",
        _doc_of(Params) or "The shared knobs of every stage.",
        "",
        _table(config_fields(Params)),
        "",
    ]
    datasets = _dataset_sections()
    if datasets:
        out += ["### `datasets.<name>`: the dataset builders' arguments\n",
                "Each dataset's section under `datasets:` (or `catalogue.datasets:`) is checked by that "
                "builder's own model.\n"]
        for name, args in datasets:
            out += [f"#### `datasets.{name}`\n", _table(config_fields(args, f"datasets.{name}.")) if args.model_fields
                    else "No arguments.", ""]
    env = _env_settings()
    if env:
        out += ["### Environment variables that win over params.yaml\n",
                "| variable | key |\n|---|---|", *[f"| `{var}` | `{key}` |" for var, key in env], ""]
    out += [
        "## pipelines/&lt;name&gt;.yaml\n",
        "One file per experiment; its name is the experiment's name (the file has no `name:` key). "
        "`model:` is open: `name` picks the component, and every other key is one of its "
        "constructor's arguments, checked against its signature.\n",
        _table(_with_model_keys(config_fields(Experiment, skip=("name",)))),
        "",
    ]
    return "\n".join(out).rstrip() + "\n"


def _with_model_keys(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pipeline's rows with what goes under the open ``model:`` mapping."""
    from runyard.schema import MODEL_NAME_DOC

    out = []
    for row in rows:
        out.append(row)
        if row["key"] == "model":
            out += [{"key": "model.name", "type": "string", "default": "required", "description": MODEL_NAME_DOC},
                    {"key": "model.<argument>", "type": "any", "default": "the constructor's",
                     "description": "Any argument of the component's constructor (of a scikit-learn model's "
                                    "factory), checked against its signature and type hints."}]
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for row in rows:
        key = f"`{row['key']}`"
        lines.append(f"| {key} | {_cell(row['type'])} | {row['default']} | {_cell(row['description'])} |")
    return "\n".join(lines)


def _dataset_sections() -> list[tuple[str, Any]]:
    from runyard.data import DATASETS

    return [(name, importlib.import_module(module).Args) for name, module in DATASETS.items()]


def _env_settings() -> list[tuple[str, str]]:
    from runyard import config

    settings = getattr(config, "ENV_SETTINGS", {})
    return [(var, ".".join(path)) for var, path in settings.items()]


def _doc_of(model) -> str:
    return inspect.cleandoc(model.__doc__) if model.__doc__ else ""


def _section_of(annotation) -> tuple[Any, str]:
    """The model a field's value is (or holds, for ``dict[str, Model]``), and the key between."""
    from pydantic import BaseModel

    def is_model(tp):
        return isinstance(tp, type) and issubclass(tp, BaseModel)

    if is_model(annotation):
        return annotation, ""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            found = _section_of(arg)
            if found[0] is not None:
                return found
    if origin is dict and len(args) == 2 and is_model(args[1]):
        return args[1], ".<key>"
    return None, ""


def _type_name(tp) -> str:
    from pydantic import BaseModel

    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "section"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _type_name(args[0]) + _constraints(args[1:])
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, tuple, dict):
        names = {list: "list", tuple: "pair" if len(args) == 2 and args[0] == args[1] else "tuple", dict: "mapping"}
        if origin is tuple and names[tuple] == "pair":
            return f"pair of {_type_name(args[0])}"
        if origin is dict:
            return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
        return f"{names[origin]} of " + ", ".join(_type_name(a) for a in args if a is not Ellipsis)
    if isinstance(tp, type):
        names = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "Path": "path"}
        return names.get(tp.__name__, tp.__name__)
    return str(tp)


def _constraints(metadata) -> str:
    """Range and length constraints (pydantic's Field(gt=...), annotated_types) in words."""
    words = []
    for meta in metadata:
        inner = getattr(meta, "metadata", None)
        if isinstance(inner, list) and inner:
            words += [_constraints(inner).strip(" ()")]
            continue
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            value = getattr(meta, attr, None)
            if value is not None:
                words.append(f"{sign} {value}")
        if getattr(meta, "min_length", None) is not None:
            words.append(f"at least {meta.min_length} item{'s' if meta.min_length != 1 else ''}")
        if getattr(meta, "max_length", None) is not None:
            words.append(f"at most {meta.max_length} items")
    words = [w for w in words if w]
    return f" ({', '.join(words)})" if words else ""


def _default(field) -> str:
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value, default=str)}`"


def _cell(text: str) -> str:
    """Text fit for one table cell: one line, RST double backquotes as markdown code, pipes escaped."""
    text = " ".join(str(text).split()).replace("``", "`")
    return _escape(text).replace("|", "\\|")


def _escape(text: str) -> str:
    """Angle brackets outside code spans as entities (else markdown takes them for HTML)."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _anchor(title: str) -> str:
    """The id mkdocs' toc gives a heading such as `runyard cluster up`."""
    return "-".join(title.lower().split())
