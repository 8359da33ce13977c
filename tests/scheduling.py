"""What Helm and the Kubernetes scheduler do with the device-plugin releases we send.

- `coalesce`: Helm's merge of a release's values into the chart's own defaults
  (helm.sh/helm/v3/pkg/chartutil/coalesce.go): maps merge key by key, any other
  value (lists included) replaces the default, and a null deletes the default key.
- `CHARTS`: for each pinned chart, its defaults (tests/data/helm, sources in
  SOURCES.md there) and how its DaemonSet template turns values into the pod's
  nodeSelector, affinity and tolerations (the template lines are cited).
- `schedules`: whether a DaemonSet pod goes to a node with these labels and
  taints: every nodeSelector label, one required node-affinity term whose every
  expression holds, and a toleration for every NoSchedule/NoExecute taint
  (Kubernetes "Assigning Pods to Nodes", "Taints and Tolerations").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

HELM_DATA = Path(__file__).resolve().parent / "data" / "helm"


def coalesce(defaults: dict, values: dict) -> dict:
    out = copy.deepcopy(defaults)
    for key, value in values.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = coalesce(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class PodScheduling:
    node_selector: dict
    affinity: dict
    tolerations: list


def _nvidia(v: dict) -> PodScheduling:
    # templates/daemonset-device-plugin.yml: `with .Values.nodeSelector`, `with .Values.affinity`, `with .Values.tolerations`.
    return PodScheduling(v.get("nodeSelector") or {}, v.get("affinity") or {}, v.get("tolerations") or [])


def _efa(v: dict) -> PodScheduling:
    # templates/daemonset.yaml: CriticalAddonsOnly first, then .Values.tolerations; nodeSelector from
    # .Values.nodeSelector; one required term per supportedInstanceLabels key, each `key In values` and
    # `eks.amazonaws.com/compute-type NotIn [auto]`.
    labels = v["supportedInstanceLabels"]
    terms = [{"matchExpressions": [{"key": key, "operator": "In", "values": list(labels["values"])},
                                   {"key": "eks.amazonaws.com/compute-type", "operator": "NotIn", "values": ["auto"]}]}
             for key in labels["keys"]]
    return PodScheduling(v.get("nodeSelector") or {},
                         {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}},
                         [{"key": "CriticalAddonsOnly", "operator": "Exists"}, *(v.get("tolerations") or [])])


def _neuron(v: dict) -> PodScheduling:
    # device-plugin-daemonset.yaml: .Values.devicePlugin.{nodeSelector, tolerations}; the affinity from
    # .Values.devicePlugin.affinity through the `neuron-device-plugin.affinity` helper, which puts the
    # instance-type label for __INSTANCE_TYPE_KEY__ and .Values.neuronInstances for __NEURON_INSTANCES__.
    def fill(node):
        if isinstance(node, dict):
            return {k: fill(x) for k, x in node.items()}
        if isinstance(node, list):
            return [fill(x) for x in node]
        return {"__INSTANCE_TYPE_KEY__": "node.kubernetes.io/instance-type",
                "__NEURON_INSTANCES__": list(v.get("neuronInstances") or [])}.get(node, node) if isinstance(node, str) else node
    dp = v["devicePlugin"]
    return PodScheduling(dp.get("nodeSelector") or {}, fill(dp.get("affinity") or {}), dp.get("tolerations") or [])


@dataclass(frozen=True)
class Chart:
    release: str  # our release's resource name
    directory: str  # under tests/data/helm
    scheduling: Callable[[dict], PodScheduling]
    accelerator: str | None  # the accelerator whose nodes it must reach; None for the EFA plugin

    def defaults(self) -> dict:
        return yaml.safe_load((HELM_DATA / self.directory / "values.yaml").read_text())


CHARTS = {
    "aws-efa-k8s-device-plugin": Chart("eks-efa-device-plugin", "aws-efa-k8s-device-plugin-v0.5.30", _efa, None),
    "nvidia-device-plugin": Chart("eks-nvidia-device-plugin", "nvidia-device-plugin-0.17.1", _nvidia, "gpu"),
    "oci://public.ecr.aws/neuron/neuron-helm-chart": Chart("eks-neuron-device-plugin", "neuron-helm-chart-1.1.2", _neuron, "neuron"),
}


def _expression_holds(expr: dict, labels: dict[str, str]) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values") or []
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt"):
        return key in labels and (int(labels[key]) > int(values[0]) if op == "Gt" else int(labels[key]) < int(values[0]))
    raise ValueError(f"unknown operator {op}")


def _tolerates(tolerations: list[dict], taint: dict) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint["effect"]:
            continue
        if t.get("operator", "Equal") == "Exists":
            if not t.get("key") or t["key"] == taint["key"]:
                return True
        elif t.get("key") == taint["key"] and t.get("value", "") == taint.get("value", ""):
            return True
    return False


def schedules(pod: PodScheduling, labels: dict[str, str], taints: list[dict]) -> bool:
    if any(labels.get(k) != v for k, v in pod.node_selector.items()):
        return False
    required = (pod.affinity.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if required and not any(all(_expression_holds(e, labels) for e in term.get("matchExpressions") or [])
                            for term in required["nodeSelectorTerms"]):
        return False
    return all(_tolerates(pod.tolerations, t) for t in taints if t["effect"] in ("NoSchedule", "NoExecute"))


# --- Karpenter: which NodePool a pending pod launches, and with what ---------------------------------
# What Karpenter's provisioner checks of a pending pod against a NodePool (aws/karpenter-provider-aws
# v1.11.0 to v1.14.1 and kubernetes-sigs/karpenter): the node it would launch carries the template's labels,
# the single value of each `In` requirement and its own well-known labels; the pod's nodeSelector, required
# node affinity and tolerations must hold there (as for any node); and its requests must fit the instance
# type's allocatable resources (pkg/providers/instancetype/types.go: computeCapacity, kubeReservedResources,
# evictionThreshold; VM memory overhead 7.5%, options.go), with vpc.amazonaws.com/efa the number of the
# EC2NodeClass's efa-only interfaces, and extended resources from NodeOverlays of its instance type.

VM_MEMORY_OVERHEAD = 0.075
EVICTION_MIB = 100


@dataclass(frozen=True)
class Launch:
    nodepool: str
    instance_type: str
    labels: dict
    allocatable: dict
    interfaces: list  # the EC2NodeClass's networkInterfaces, as the node gets them


def quantity(value) -> float:
    """A Kubernetes quantity as a number (Mi/Gi in MiB for memory-like values)."""
    text = str(value)
    for suffix, scale in (("Gi", 1024), ("Mi", 1), ("Ki", 1 / 1024), ("m", 1 / 1000)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


def _kube_reserved_millicpu(millicpus: int) -> int:
    total = 0
    for start, end, share in ((0, 1000, 0.06), (1000, 2000, 0.01), (2000, 4000, 0.005), (4000, 1 << 31, 0.0025)):
        if millicpus >= start:
            total += int((min(millicpus, end) - start) * share)
    return total


def karpenter_node(nodepool: dict, nodeclass: dict, overlays: list[dict], instance_type: dict) -> Launch:
    """The node a NodePool launches of this instance type (DescribeInstanceTypes' shape)."""
    spec = nodepool["spec"]["template"]["spec"]
    labels = dict(nodepool["spec"]["template"]["metadata"].get("labels") or {})
    labels.update({r["key"]: r["values"][0] for r in spec["requirements"] if r["operator"] == "In" and len(r["values"]) == 1})
    labels.update({"karpenter.sh/nodepool": nodepool["metadata"]["name"], "kubernetes.io/os": "linux"})
    name = instance_type["InstanceType"]
    interfaces = nodeclass["spec"].get("networkInterfaces")
    pods = nodeclass["spec"].get("kubelet", {}).get("maxPods", 110)
    millicpus = instance_type["VCpuInfo"]["DefaultVCpus"] * 1000
    memory = instance_type["MemoryInfo"]["SizeInMiB"] * (1 - VM_MEMORY_OVERHEAD) - (11 * pods + 255) - EVICTION_MIB
    efa = (sum(i["interfaceType"] == "efa-only" for i in interfaces) if interfaces is not None
           else instance_type["NetworkInfo"].get("EfaInfo", {}).get("MaximumEfaInterfaces", 0))
    allocatable = {"cpu": (millicpus - _kube_reserved_millicpu(millicpus)) / 1000, "memory": memory, "pods": pods,
                   "vpc.amazonaws.com/efa": efa}
    for gpu in (instance_type.get("GpuInfo") or {}).get("Gpus", []):
        if gpu["Manufacturer"] == "NVIDIA":
            allocatable["nvidia.com/gpu"] = allocatable.get("nvidia.com/gpu", 0) + gpu["Count"]
    for overlay in overlays:
        if all(_expression_holds(r, {"node.kubernetes.io/instance-type": name, **labels}) for r in overlay["spec"]["requirements"]):
            allocatable.update({k: quantity(v) for k, v in overlay["spec"].get("capacity", {}).items()})
    return Launch(nodepool["metadata"]["name"], name, labels, allocatable, interfaces or [])


def fits(requests: dict, allocatable: dict) -> list[str]:
    """The requests the node cannot hold (an empty list: the pod fits)."""
    return [f"{k}: {v} > {allocatable.get(k, 0)}" for k, v in requests.items() if quantity(v) > allocatable.get(k, 0)]


def pod_requests(template: dict) -> dict:
    out: dict = {}
    for c in template["spec"]["containers"]:
        for k, v in (c.get("resources", {}).get("requests") or {}).items():
            out[k] = out.get(k, 0) + quantity(v)
    return out


def karpenter_launches(template: dict, nodepools: list[dict], nodeclasses: dict[str, dict], overlays: list[dict],
                       instance_types: dict[str, dict]) -> list[Launch]:
    """The NodePools that would launch a node for this pending pod, with the node each would launch."""
    spec = template["spec"]
    pod = PodScheduling(spec.get("nodeSelector") or {}, spec.get("affinity") or {}, spec.get("tolerations") or [])
    out = []
    for pool in nodepools:
        tspec = pool["spec"]["template"]["spec"]
        (itype,) = [r["values"][0] for r in tspec["requirements"] if r["key"] == "node.kubernetes.io/instance-type"]
        node = karpenter_node(pool, nodeclasses[tspec["nodeClassRef"]["name"]], overlays, instance_types[itype])
        if schedules(pod, node.labels, tspec.get("taints") or []) and not fits(pod_requests(template), node.allocatable):
            out.append(node)
    return out
