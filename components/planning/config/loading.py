"""Loading a config: from a stack file or the settings the Pulumi engine hands the program, validated in
full (fields, then the checks across them, then sizing) or refused with every problem at once."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import yaml_reading

from .base import NAMESPACE
from .checks import fleet_checks, stack_checks
from .data_checks import data_checks
from .eks import EksConfig
from .errors import from_pydantic, section_names
from .problems import ConfigError, Problem
from .fleets import FleetConfig, InstanceTypeSpec
from .jobs import ClusterConfig, JobConfig
from .network import NetworkConfig
from .sizing import sizing_checks
from .stack import StackConfig, catalog_for


def _valid_specs(specs: dict) -> dict[str, InstanceTypeSpec]:
    out = {}
    for name, value in specs.items():
        try:
            out[name] = InstanceTypeSpec.model_validate(value)
        except ValidationError:
            pass  # reported by the whole-document validation
    return out


def _salvage(raw: dict, context: dict) -> tuple[StackConfig | None, list[tuple[int, FleetConfig]], list[tuple[int, JobConfig]]]:
    """The parts of an invalid document that are valid alone, so their checks still run."""
    def one(model, value, default=None):
        try:
            return model.model_validate(value if value is not None else {}, context=context)
        except ValidationError:
            return default
    if not isinstance(raw.get("region"), str):
        return None, [], []
    cfg = StackConfig.model_construct(
        region=raw["region"],
        network=one(NetworkConfig, raw.get("network"), NetworkConfig()),
        eks=one(EksConfig, raw.get("eks"), EksConfig()),
        instance_types=_valid_specs(raw.get("instanceTypes") if isinstance(raw.get("instanceTypes"), dict) else {}),
        clusters=[c for v in (raw.get("clusters") if isinstance(raw.get("clusters"), list) else []) if (c := one(ClusterConfig, v))],
        fleets=[], jobs=[],
    )
    items = lambda key: raw.get(key) if isinstance(raw.get(key), list) else []  # noqa: E731
    fleets = [(i, m) for i, v in enumerate(items("fleets")) if (m := one(FleetConfig, v))]
    jobs = [(j, m) for j, v in enumerate(items("jobs")) if (m := one(JobConfig, v))]
    return cfg, fleets, jobs


def load(raw: dict, source: str = "stack config") -> StackConfig:
    """Validate a config document (`region` plus the namespace's sections) or raise ConfigError."""
    problems: list[Problem] = []
    specs = raw.get("instanceTypes") if isinstance(raw.get("instanceTypes"), dict) else {}
    context = {"catalog": catalog_for(_valid_specs(specs)), "region": raw.get("region")}
    try:
        cfg = StackConfig.model_validate(raw, context=context)
        fleets, jobs = list(enumerate(cfg.fleets)), list(enumerate(cfg.jobs))
    except ValidationError as err:
        problems.extend(from_pydantic(err))
        cfg, fleets, jobs = _salvage(raw, context)
    if cfg is not None:
        cat = cfg.catalog()
        for i, f in fleets:
            problems.extend(fleet_checks(i, f, cat))
        raw_fleets = raw.get("fleets") if isinstance(raw.get("fleets"), list) else []
        raw_names = {f.get("name") for f in raw_fleets if isinstance(f, dict)}
        problems.extend(stack_checks(cfg, fleets, jobs, raw_names))
        problems.extend(data_checks(cfg, fleets, jobs))
        if not problems and cfg.network.existing is None:  # existing subnets are checked at deploy time
            problems.extend(sizing_checks(cfg, fleets, cat))
    if problems:
        # Root causes first: a wrong region is why its AZs and types look wrong.
        problems = sorted(dict.fromkeys(problems), key=lambda p: p.path != "aws:region")
        raise ConfigError(problems, source)
    return cfg


def document_from_settings(settings: dict[str, Any]) -> dict:
    """`{"aws:region": ..., "efa-infra:fleets": [...]}` -> the document `load` takes.

    Values may be structured (a stack file) or JSON text (how the Pulumi engine
    hands config to the program). Other namespaces are left alone; unknown keys
    of ours are kept so that validation names them.
    """
    doc: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, str) and key.startswith(NAMESPACE + ":"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if key == "aws:region":
            doc["region"] = value
        elif key.startswith(NAMESPACE + ":"):
            doc[key.split(":", 1)[1]] = value
    return doc


def stray_keys(settings: dict[str, Any]) -> list[Problem]:
    """Keys written without a namespace that name one of the config's keys (`fleets:` for `efa-infra:fleets:`):
    the program reads only namespaced keys, so such a section would be dropped without a word."""
    ours = {name: f"{NAMESPACE}:{name}" for name in section_names()} | {"region": "aws:region"}
    out = []
    for key in settings:
        if not isinstance(key, str) or ":" in key:
            continue
        near = ours.get(key) or next(iter(ours[m] for m in difflib.get_close_matches(key, ours, n=1)), None)
        if near:
            out.append(Problem(key, f"a key without a namespace, which the program does not read; write it as {near!r}"))
    return out


def load_settings(settings: dict[str, Any], source: str = "stack config") -> StackConfig:
    """Validate a stack's settings (`{"ns:key": value}`, as a stack file or the engine gives them) or raise
    ConfigError. Keys that would be dropped are reported alone: the rest would be checked against a
    config the file does not mean."""
    stray = stray_keys(settings)
    if stray:
        raise ConfigError(stray, source)
    return load(document_from_settings(settings), source)


def read_stack_file(path: str | Path) -> dict[str, Any]:
    """The `config:` map of a Pulumi stack file, keys as written (`ns:key`)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError([Problem(str(p), "no such stack file")], str(p)) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(str(p), f"cannot be read as a stack file ({exc.__class__.__name__})")], str(p)) from None
    return parse_stack_file(text, str(p))


def parse_stack_file(text: str, source: str) -> dict[str, Any]:
    """The `config:` map of a stack file's text (`source` names it in errors): YAML read strictly, a key
    given twice in one mapping refused (YAML would keep the last without a word)."""
    data = yaml_reading.read(text, source)
    settings = data.get("config") if isinstance(data, dict) else None
    if not isinstance(settings, dict):
        raise ConfigError([Problem(source, "a stack file needs a top-level 'config:' mapping")], source)
    return settings


def load_file(path: str | Path) -> StackConfig:
    """Load and validate a stack file such as stacks/Pulumi.dev.yaml."""
    return load_settings(read_stack_file(path), str(path))
