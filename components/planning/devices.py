"""Who manages a cluster's EFA devices and accelerators: the device plugins, or DRA drivers
(`eks.devices`), and what a job's pod asks for under DRA.

Under DRA a pod requests devices through a ResourceClaimTemplate. A pod that holds a whole node takes
every device of each class (allocationMode All). A pod that takes part of a GPU node takes whole PCIe
groups (`data/pcie_topology.json`): for each group, its GPUs and its EFA devices, constrained to one
PCIe root by the attribute both drivers publish, so that GPUDirect RDMA never crosses the CPU's fabric.
Facts in `data/dra_drivers.json`, each with its source. Pure: no Pulumi import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
CLAIM = "devices"  # the pod's claim, and the suffix of its template's name


@dataclass(frozen=True)
class Driver:
    kind: str  # efa, gpu, neuron
    driver: str
    device_class: str
    chart: tuple[str, str | None, str]  # name, repository, version (as the device plugins' charts)
    namespace: str
    min_kubernetes: tuple[int, int]


@lru_cache(maxsize=1)
def _drivers() -> dict:
    return json.loads((DATA / "dra_drivers.json").read_text())


@lru_cache(maxsize=1)
def _topology() -> dict:
    return json.loads((DATA / "pcie_topology.json").read_text())["types"]


def driver(kind: str) -> Driver:
    d = _drivers()["drivers"][kind]
    c = d["chart"]
    major, minor = d["minKubernetes"].split(".")
    return Driver(kind, d["driver"], d["deviceClass"], (c["name"], c["repository"], c["version"]), c["namespace"],
                  (int(major), int(minor)))


def pcie_root_attribute() -> str:
    return _drivers()["pcieRootAttribute"]


def version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


@dataclass(frozen=True)
class PcieGroups:
    """An instance type's GPUs and EFA devices by PCIe root, all groups alike."""

    count: int
    gpus: int  # per group
    efa: int  # per group


def pcie_groups(instance_type: str) -> PcieGroups | None:
    """The type's PCIe groups, where a published topology says them; None elsewhere."""
    t = _topology().get(instance_type)
    if t is None:
        return None
    shapes = {(len(g["gpus"]), len(g["efa"])) for g in t["groups"]}
    ((gpus, efa),) = shapes  # every listed type has like groups
    return PcieGroups(len(t["groups"]), gpus, efa)


def topology(instance_type: str) -> list[dict]:
    """The published groups of a type: root, GPUs' and EFA devices' PCI addresses."""
    return _topology()[instance_type]["groups"]


def _request(name: str, device_class: str, count: int | None) -> dict:
    exactly: dict = {"deviceClassName": device_class}
    if count is None:
        exactly["allocationMode"] = "All"
    else:
        exactly["count"] = count
    return {"name": name, "exactly": exactly}


def claim_spec(*, efa_devices: int, accelerator_kind: str | None, accelerators: int, node_accelerators: int,
               instance_type: str) -> dict:
    """The ResourceClaim spec of a pod with `accelerators` of the node's `node_accelerators` and `efa_devices`
    EFA devices: every device of each class for a whole node, else the GPUs' PCIe groups."""
    requests: list[dict] = []
    constraints: list[dict] = []
    whole = accelerators == node_accelerators
    if whole:
        if accelerator_kind:
            requests.append(_request(accelerator_kind, driver(accelerator_kind).device_class, None))
        if efa_devices:
            requests.append(_request("efa", driver("efa").device_class, None))
    else:
        groups = pcie_groups(instance_type)
        if groups is None or accelerator_kind != "gpu":  # config.load refuses such a job
            raise ValueError(f"part of a node is for GPU types with a known PCIe layout, not {instance_type}")
        for i in range(accelerators // groups.gpus):
            pair = [_request(f"gpu-{i}", driver("gpu").device_class, groups.gpus)]
            if efa_devices:
                pair.append(_request(f"efa-{i}", driver("efa").device_class, groups.efa))
                constraints.append({"requests": [r["name"] for r in pair], "matchAttribute": pcie_root_attribute()})
            requests.extend(pair)
    spec: dict = {"devices": {"requests": requests}}
    if constraints:
        spec["devices"]["constraints"] = constraints
    return spec
