"""The stack config: pydantic models, loading, and every check made before
anything is created.

Keys live under the project's namespace (`efa-infra:network`,
`efa-infra:fleets`, ...) and `aws:region`, as `pulumi config` writes them.
`load()` returns a validated `StackConfig` or raises `ConfigError` listing every
problem at once, each with its key path, the bad value and what would be valid.
The same models give the JSON Schema for editors. Pure: no Pulumi import.

The models are by section (network, fleets, eks, jobs, stack), the checks
across fields in checks and sizing, problems in errors, loading in loading.
This package's names are the config's public API.
"""

from importlib import import_module

# Each name from the module that defines it, loaded on first use: a command loads only what it reads
# (the CLI catches ConfigError without building the models, `types` never builds them).
_WHERE = {
    "ConfigError": "problems", "Problem": "problems", "key_path": "errors", "advisories": "checks",
    "FleetConfig": "fleets", "JobConfig": "jobs", "ExistingNetwork": "network", "StackConfig": "stack",
    "document_from_settings": "loading", "load": "loading", "load_file": "loading", "load_settings": "loading",
    "read_stack_file": "loading", "stack_file_schema": "schema", "address_plan": "sizing",
    "fleet_addresses_per_node": "sizing",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
