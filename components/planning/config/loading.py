"""Loading a config: from a stack file or the settings the Pulumi engine hands the program, validated in
full (fields, then the checks across them, then sizing) or refused with every problem at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .base import NAMESPACE
from .checks import fleet_checks, stack_checks
from .data_checks import data_checks
from .eks import EksConfig
from .errors import ConfigError, Problem, from_pydantic
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
        raise ConfigError(list(dict.fromkeys(problems)), source)
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


def read_stack_file(path: str | Path) -> dict[str, Any]:
    """The `config:` map of a Pulumi stack file, keys as written (`ns:key`)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError([Problem(str(p), "no such stack file")], str(p)) from None
    return parse_stack_file(text, str(p))


def parse_stack_file(text: str, source: str) -> dict[str, Any]:
    """The `config:` map of a stack file's text (`source` names it in errors)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(source, f"not valid YAML: {exc}")], source) from None
    settings = data.get("config") if isinstance(data, dict) else None
    if not isinstance(settings, dict):
        raise ConfigError([Problem(source, "a stack file needs a top-level 'config:' mapping")], source)
    return settings


def load_file(path: str | Path) -> StackConfig:
    """Load and validate a stack file such as stacks/Pulumi.dev.yaml."""
    return load(document_from_settings(read_stack_file(path)), str(path))
