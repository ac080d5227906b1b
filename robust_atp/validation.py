"""Pydantic validation errors as the one line a user reads: `<file>: <field.path>: <message>`.

Shared by the suite schema and the method schemas (`prune.methods`), so neither imports the other.
"""
from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError


def field_path(loc: tuple) -> str:
    """A pydantic location as the suite spells it: `methods[2].keep`; `<root>` when empty."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The valid keys at `loc` (a path of field names and list indices) of `model`."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = cur.model_fields.get(part) if isinstance(cur, type) and issubclass(cur, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        for arg in getattr(ann, "__args__", (ann,)):
            for inner in getattr(arg, "__args__", (arg,)):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    cur = inner
                    break
    return list(cur.model_fields) if isinstance(cur, type) and issubclass(cur, BaseModel) else []


def describe_validation_error(err: ValidationError, model: type[BaseModel] = None) -> tuple[str, str]:
    """The first error of `err` as (field path, message); `model` (the validated schema) names
    the known keys when a key is unknown."""
    errors = err.errors()
    # a misspelt key also shows up as a missing field: report the typo, it explains both
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = tuple(p for p in e["loc"] if p not in ("function-after",) and not str(p).startswith("function-"))
    where = field_path(loc)
    if e["type"] == "extra_forbidden":
        key = str(loc[-1])
        known = known_keys(model, loc) if model is not None else []
        near = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else (f"; known keys: {', '.join(known)}" if known else "")
        return where, f"unknown key{hint}"
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if e["type"] == "missing":
        msg = "required field is missing"
    elif e["type"] != "value_error" and "input" in e and not isinstance(e["input"], (dict, list)):
        msg = f"{msg}, got {e['input']!r}"
    return where, msg


def format_validation_error(path: str, err: ValidationError, model: type[BaseModel] = None) -> str:
    """`<path>: <field.path>: <message>`."""
    where, msg = describe_validation_error(err, model)
    return f"{path}: {where}: {msg}"
