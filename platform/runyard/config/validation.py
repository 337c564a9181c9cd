"""Pydantic helpers shared by every typed section: one-line errors, typed keyword arguments."""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, create_model, field_validator

from runyard.errors import RunyardError


def validate(model: type[BaseModel], raw: Any, where: str) -> Any:
    """Validate ``raw`` against ``model``; on failure raise one line naming the key."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise RunyardError(format_validation_error(e, model, where)) from None


def format_validation_error(e: ValidationError, model: type[BaseModel], where: str) -> str:
    err = e.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"] if p != "name" or len(err["loc"]) > 1]
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = fields_at(model, err["loc"][:-1])
        msg = f"unknown key; allowed: {', '.join(allowed)}"
    elif err["type"] == "missing":
        msg = "required key is missing"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if "input" in err and not isinstance(err["input"], dict):
            msg += f" (got {err['input']!r})"
    more = len(e.errors()) - 1
    suffix = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
    return f"{where}: {key}: {msg}{suffix}"


def fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed at a nested location of a pydantic model (aliases, as a file writes them)."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            break
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        current = next((c for c in candidates if inspect.isclass(c) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    hidden = getattr(current, "HIDDEN", frozenset())
    return [fi.alias or f for f, fi in getattr(current, "model_fields", {}).items() if f not in hidden]


def at_least(lower: str, upper: str):
    """A field validator for ``upper``: it may not be below ``lower`` (declared before it).
    A field validator, not a model validator, so the error names the key it is about."""

    def check(cls, value, info: ValidationInfo):
        low = info.data.get(lower)
        if low is not None and value < low:
            raise ValueError(f"must be at least {lower} ({low})")
        return value

    return field_validator(upper)(classmethod(check))


def kwargs_model(fn, skip: set[str]) -> type[BaseModel]:
    """A strict pydantic model of ``fn``'s keyword arguments (types, ranges and defaults)."""
    fields = {}
    for p in inspect.signature(fn, eval_str=True).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = Any if p.annotation is p.empty else p.annotation
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (ann, default)
    return create_model(f"{fn.__qualname__}Args", __config__=ConfigDict(extra="forbid"), **fields)
