"""The JSON Schema of a stack file, from the same models that validate it (tools/gen_schema.py writes it)."""

from __future__ import annotations

from ..catalog import regions
from .base import NAMESPACE
from .stack import StackConfig


def stack_file_schema() -> dict:
    """JSON Schema of a stack file (stacks/Pulumi.<env>.yaml), from the same models that validate it."""
    model = StackConfig.model_json_schema(by_alias=True)
    ours = {f"{NAMESPACE}:{key}": schema for key, schema in model["properties"].items() if key != "region"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "efa-infra stack file",
        "description": "Pulumi stack config for efa-infra. Generated from the models in components/planning/config/ by tools/gen_schema.py.",
        "type": "object",
        "properties": {
            "config": {
                "type": "object",
                "properties": {"aws:region": {"type": "string", "enum": list(regions()), "description": "AWS region."}, **ours},
                "required": ["aws:region"],
                # Other namespaces (aws:profile, ...) are Pulumi's business; ours must be known keys.
                "propertyNames": {"anyOf": [{"not": {"pattern": f"^{NAMESPACE}:"}}, {"enum": sorted(ours)}]},
            },
        },
        "required": ["config"],
        "$defs": model.get("$defs", {}),
    }
