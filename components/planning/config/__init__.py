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

from .errors import ConfigError, Problem, key_path
from .fleets import FleetConfig
from .jobs import JobConfig
from .loading import document_from_settings, load, load_file, load_settings, read_stack_file
from .network import ExistingNetwork
from .schema import stack_file_schema
from .sizing import address_plan, fleet_addresses_per_node
from .stack import StackConfig

__all__ = ["ConfigError", "ExistingNetwork", "FleetConfig", "JobConfig", "Problem", "StackConfig", "address_plan",
           "document_from_settings", "fleet_addresses_per_node", "key_path", "load", "load_file", "load_settings",
           "read_stack_file", "stack_file_schema"]
