"""Problems with a config: each names its key path, the bad value and what would be valid; ConfigError
lists them all at once. Pydantic's validation errors are told the same way."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .base import NAMESPACE
from .stack import StackConfig

SECTIONS = ("network", "fleets", "instanceTypes", "eks", "clusters", "jobs", "protect")



@dataclass(frozen=True)
class Problem:
    path: str  # e.g. efa-infra:fleets[0].nodes.max
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem], source: str = "stack config"):
        self.problems = problems
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{len(self.problems)} problem{'s' * (len(self.problems) != 1)} in {self.source}:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


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


def from_pydantic(err: ValidationError) -> list[Problem]:
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        path = key_path(loc)
        if e["type"] == "extra_forbidden":
            model = _model_at(loc)
            valid = _valid_keys(model) if model else ", ".join(SECTIONS)
            near = difflib.get_close_matches(str(loc[-1]), valid.split(", "), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            problems.append(Problem(path, f"unknown key{hint} Valid keys here: {valid}"))
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            problems.append(Problem(path, "required key is missing"))
        elif isinstance(e["input"], (dict, list)):
            problems.append(Problem(path, msg))  # a whole section: the message names the values
        else:
            problems.append(Problem(path, f"{msg} (got {e['input']!r})"))
    return problems
