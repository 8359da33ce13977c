"""What Kubernetes' DRA allocator does with a pod's ResourceClaim on a node: which devices it gets.

- The devices a node publishes (ResourceSlices), per driver, with the attributes the drivers document:
  dra.net (DRANET, with aws-dranet's filter: EFA devices only) publishes pciDevice 'Elastic Fabric Adapter
  (EFA)', rdma, pciAddress and resource.kubernetes.io/pcieRoot; gpu.nvidia.com publishes type 'gpu',
  resource.kubernetes.io/pciBusID and resource.kubernetes.io/pcieRoot (kubernetes-sigs/dranet@f258477c
  examples/aws_eks_examples/gpu-efa/resourceslice-dranet.yaml and resourceslice-gpu.yaml, read from a live
  p4d node). The PCIe layout per type is components/data/pcie_topology.json (p5: AWS's NCCL topology).
- The DeviceClasses the charts create, with their CEL selectors as the charts write them; the selectors
  are evaluated here for the one form they use (a conjunction of equalities on device.driver and
  device.attributes["domain"].name); anything else is refused rather than guessed.
- The allocation (Kubernetes "Dynamic Resource Allocation"; resource.k8s.io/v1 DeviceRequest and
  DeviceConstraint): each request takes `count` devices of its class, or all of them (allocationMode All);
  a matchAttribute constraint makes every device of its requests carry the same value of the attribute; a
  device goes to one claim only. Searched exhaustively, requests in order.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from components.planning import devices

EFA_PCI_DEVICE = "Elastic Fabric Adapter (EFA)"
# name -> CEL selector, as the charts' DeviceClass templates write them (sources in components/data/dra_drivers.json).
DEVICE_CLASSES = {
    "efa.networking.k8s.aws": 'device.driver == "dra.net" &&\n'
                              "device.attributes[\"dra.net\"].pciDevice == 'Elastic Fabric Adapter (EFA)'\n",
    "gpu.nvidia.com": "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'",
    "neuron.aws.com": 'device.driver == "neuron.aws.com"',
}


@dataclass(frozen=True)
class Device:
    name: str
    driver: str
    attributes: dict[str, str | bool]  # fully qualified: domain/name

    def attribute(self, domain: str, name: str):
        return self.attributes.get(f"{domain}/{name}")


def published(instance_type: str) -> list[Device]:
    """The GPU and EFA devices a node of the type publishes through gpu.nvidia.com and dra.net."""
    root_attr = devices.pcie_root_attribute()
    out = []
    for group in devices.topology(instance_type):
        for bus in group["gpus"]:
            out.append(Device(f"gpu-{len([d for d in out if d.driver == 'gpu.nvidia.com'])}", "gpu.nvidia.com", {
                "gpu.nvidia.com/type": "gpu", "resource.kubernetes.io/pciBusID": bus, root_attr: group["root"]}))
        for addr in group["efa"]:
            out.append(Device("pci-" + re.sub(r"[:.]", "-", addr), "dra.net", {
                "dra.net/pciDevice": EFA_PCI_DEVICE, "dra.net/rdma": True, "dra.net/pciAddress": addr, root_attr: group["root"]}))
    return out


_TERM = re.compile(r"""^device\.(?:driver|attributes\[(["'])(?P<domain>[^"']+)\1\]\.(?P<name>\w+))\s*==\s*(["'])(?P<value>[^"']*)\4$""")


def selects(expression: str, device: Device) -> bool:
    for term in (t.strip() for t in expression.split("&&")):
        m = _TERM.match(term)
        if m is None:
            raise ValueError(f"not a CEL form this model evaluates: {term!r}")
        have = device.driver if m["domain"] is None else device.attribute(m["domain"], m["name"])
        if have != m["value"]:
            return False
    return True


def allocate(claim: dict, node: list[Device], taken: set[str] = frozenset()) -> dict[str, list[Device]] | None:
    """The devices each request of `claim` (a ResourceClaim spec) gets on `node`, devices in `taken` being
    another claim's; None if the claim cannot be satisfied there."""
    requests = claim["devices"]["requests"]
    constraints = claim["devices"].get("constraints") or []
    free = [d for d in node if d.name not in taken]

    def fits(chosen: dict[str, list[Device]]) -> bool:
        for c in constraints:
            values = {d.attributes.get(c["matchAttribute"]) for r in c["requests"] if r in chosen for d in chosen[r]}
            if len(values) > 1 or None in values:
                return False
        return True

    def search(i: int, chosen: dict[str, list[Device]]) -> dict[str, list[Device]] | None:
        if i == len(requests):
            return chosen
        exactly = requests[i]["exactly"]
        used = {d.name for ds in chosen.values() for d in ds}
        candidates = [d for d in free if d.name not in used and selects(DEVICE_CLASSES[exactly["deviceClassName"]], d)]
        for c in constraints:  # only candidates that can still meet a constraint (prunes; fits() decides)
            if requests[i]["name"] in c["requests"]:
                values = {d.attributes.get(c["matchAttribute"]) for r in c["requests"] if r in chosen for d in chosen[r]}
                if len(values) == 1:
                    candidates = [d for d in candidates if d.attributes.get(c["matchAttribute"]) in values]
        if exactly.get("allocationMode") == "All":
            options = [candidates] if candidates else []
        else:
            options = itertools.combinations(candidates, exactly.get("count", 1))
        for option in options:
            trial = {**chosen, requests[i]["name"]: list(option)}
            if fits(trial):
                found = search(i + 1, trial)
                if found is not None:
                    return found
        return None

    return search(0, {})
