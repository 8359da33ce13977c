"""The network topology layers an instance type reports (DescribeInstanceTopology), from data with its
source (data/network_topology.json), and the node labels EKS puts on them. Pure: no Pulumi import."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "network_topology.json"


@lru_cache(maxsize=1)
def _data() -> tuple[str, dict[str, int]]:
    raw = json.loads(DATA_FILE.read_text())
    return raw["labelPrefix"], {t: int(n) for n, types in raw["layers"].items() for t in types}


def layer_labels(instance_type: str) -> list[str]:
    """The type's network-node-layer labels, closest to the instance first; none for a type without topology."""
    prefix, layers = _data()
    return [f"{prefix}{n}" for n in range(layers.get(instance_type, 0), 0, -1)]
