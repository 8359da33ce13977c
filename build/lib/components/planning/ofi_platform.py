"""What the aws-ofi-nccl plugin sets by itself, per instance type.

The plugin (the NCCL net plugin that drives EFA) carries a table of EC2
platforms and, at NCCL init, fills in each platform's NCCL settings, selects
the efa provider and, in its NVIDIA builds, sets FI_EFA_FORK_SAFE; it never
overwrites a value the environment already has. The table is kept as data,
with its source, in `data/aws_ofi_nccl_platforms.json`. A launch sets none of
what the plugin sets: a copy would only freeze today's values over the
plugin's own. Pure: no Pulumi import.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .catalog import InstanceType

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "aws_ofi_nccl_platforms.json"


@dataclass(frozen=True)
class Platform:
    name: str  # the plugin's name for the entry, e.g. "p5/p5e"
    env: dict[str, str]  # what the plugin sets on it
    gdr_required: bool  # the plugin requires GPUDirect RDMA there


@lru_cache(maxsize=1)
def _table() -> dict:
    return json.loads(DATA_FILE.read_text())


def platform(instance_type: str) -> Platform | None:
    """The plugin's entry for a type: the first whose name equals it or whose regex matches it (regexec, unanchored)."""
    for entry in _table()["platforms"]:
        hit = re.search(entry["regex"], instance_type) if entry["regex"] else entry["name"] == instance_type
        if hit:
            return Platform(entry["name"], dict(entry["env"]), entry["gdrRequired"])
    return None


def plugin_sets(itype: InstanceType) -> dict[str, str]:
    """Every variable the plugin sets on this type (the Neuron build leaves FI_EFA_FORK_SAFE alone on purpose)."""
    entry = platform(itype.name)
    kind = itype.accelerator.kind if itype.accelerator else "gpu"
    return {**_table()["always"][kind], **(entry.env if entry else {})}


def uses_device_rdma(itype: InstanceType) -> bool:
    """Whether the type's EFA does GPUDirect RDMA, as the plugin's table says (p5.4xlarge, g5.48xlarge: no)."""
    entry = platform(itype.name)
    return bool(entry and entry.gdr_required)
