"""Pydantic's validation errors told as the project's problems (problems.py): each names its key path,
the bad value and what would be valid, in the project's words."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from .base import NAMESPACE
from .problems import Problem
from .stack import StackConfig


def key_path(loc: tuple) -> str:
    """('fleets', 0, 'nodes', 'max') -> 'efa-infra:fleets[0].nodes.max'."""
    if not loc:
        return NAMESPACE
    head, rest = loc[0], loc[1:]
    out = "aws:region" if head == "region" else f"{NAMESPACE}:{head}"
    for part in rest:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model that holds the key at `loc`, to list its valid keys."""
    model: Any = StackConfig
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            if model is StackConfig:
                return None
            continue  # a dict key, such as an instance type name
        model = _inner_model(field.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found:
            return found
    return None


def _valid_keys(model: type[BaseModel]) -> str:
    return ", ".join(f.alias or n for n, f in model.model_fields.items())


def section_names() -> list[str]:
    """The keys of the project's namespace (efa-infra:<name>), from the model: region is aws:region."""
    return [f.alias or n for n, f in StackConfig.model_fields.items() if n != "region"]


def _field_at(loc: tuple):
    """The field the value at `loc` fills, for its description (None: a list item or a dict value)."""
    model = _model_at(loc)
    if model is None or not loc or isinstance(loc[-1], int):
        return None
    return next((f for n, f in model.model_fields.items() if (f.alias or n) == loc[-1]), None)


# Pydantic's error types -> the project's words: fixed ones, then those that name the limit pydantic checked (ctx).
_ZONED = "a date and time with its zone, e.g. '2026-12-14T11:30:00Z' (quoted)"
_FIXED = {
    ("int_parsing", "int_from_float", "int_type"): "must be a whole number",
    ("float_parsing", "float_type"): "must be a number",
    ("bool_parsing", "bool_type"): "must be true or false",
    ("string_type",): "must be text (quote it in YAML if it looks like a number, a date or true/false)",
    ("list_type",): "must be a list (YAML '- item' lines or [a, b])",
    ("dict_type", "model_type", "model_attributes_type"): "must be a mapping (YAML 'key: value' lines)",
    ("timezone_aware",): f"needs a time zone: {_ZONED}",
    ("datetime_from_date_parsing", "datetime_parsing", "datetime_type"): f"must be {_ZONED}",
}
WORDS = {kind: (lambda c, w=words: w) for kinds, words in _FIXED.items() for kind in kinds} | {
    "greater_than_equal": lambda c: f"must be at least {c['ge']}",
    "greater_than": lambda c: f"must be more than {c['gt']}",
    "less_than_equal": lambda c: f"must be at most {c['le']}",
    "less_than": lambda c: f"must be less than {c['lt']}",
    "string_too_short": lambda c: f"must be at least {c['min_length']} character{'s' * (c['min_length'] != 1)} long",
    "string_too_long": lambda c: f"must be at most {c['max_length']} characters long",
    "literal_error": lambda c: f"must be one of {c['expected'].replace(' or ', ', ')}",
    "enum": lambda c: f"must be one of {c['expected'].replace(' or ', ', ')}",
    "too_short": lambda c: f"needs at least {c['min_length']} item{'s' * (c['min_length'] != 1)}",
    "too_long": lambda c: f"takes at most {c['max_length']} items",
}


def _words(e: dict, loc: tuple) -> str:
    """One pydantic error in the project's words: the rule, then what the key is (its description)."""
    if e["type"] == "string_pattern_mismatch":
        field = _field_at(loc)
        what = f": {field.description.rstrip('.')}" if field is not None and field.description else ""
        return f"not of the form this key takes{what} (pattern {e['ctx']['pattern']})"
    word = WORDS.get(e["type"])
    if word is not None:
        try:
            return word(e.get("ctx") or {})
        except KeyError:
            pass
    return e["msg"].removeprefix("Value error, ")


def from_pydantic(err: ValidationError) -> list[Problem]:
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        path = key_path(loc)
        if e["type"] == "extra_forbidden":
            model = _model_at(loc)
            top = len(loc) == 1  # a key of the namespace: named in full
            valid = ", ".join(f"{NAMESPACE}:{n}" for n in section_names()) if top or model is None else _valid_keys(model)
            near = difflib.get_close_matches(path if top else str(loc[-1]), valid.split(", "), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            problems.append(Problem(path, f"unknown key{hint} Valid keys here: {valid}"))
            continue
        msg = _words(e, loc)
        if e["type"] == "missing":
            problems.append(Problem(path, "required key is missing"))
        elif isinstance(e["input"], (dict, list)):
            problems.append(Problem(path, msg))  # a whole section: the message names the values
        else:
            shown = repr(e["input"])
            problems.append(Problem(path, msg if shown in msg else f"{msg} (got {shown})"))
    return problems
