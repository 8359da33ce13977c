"""What Helm and the Kubernetes scheduler do with the device-plugin releases we send.

- `coalesce`: Helm's merge of a release's values into the chart's own defaults
  (helm.sh/helm/v3/pkg/chartutil/coalesce.go): maps merge key by key, any other
  value (lists included) replaces the default, and a null deletes the default key.
- `CHARTS`: for each pinned chart, its defaults (tests/data/helm, sources in
  SOURCES.md there), the values its templates refuse (`fail`), and for each
  DaemonSet it renders (a device plugin, or a DRA driver's kubelet plugin) the
  device it manages and how the template turns values into the pod's
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


class ChartRefuses(ValueError):
    """A template's `fail`: Helm renders nothing."""


def _nvidia(v: dict) -> PodScheduling | None:
    # templates/daemonset-device-plugin.yml: only `if .Values.devicePlugin.enabled`; then `with .Values.nodeSelector`,
    # `with .Values.affinity`, `with .Values.tolerations`.
    if not v["devicePlugin"]["enabled"]:
        return None
    return PodScheduling(v.get("nodeSelector") or {}, v.get("affinity") or {}, v.get("tolerations") or [])


def _instance_label_terms(v: dict, compute_type_in_every_term: bool) -> list[dict]:
    labels = v["supportedInstanceLabels"]
    terms = [{"matchExpressions": [{"key": key, "operator": "In", "values": list(labels["values"])}]} for key in labels["keys"]]
    auto = {"key": "eks.amazonaws.com/compute-type", "operator": "NotIn", "values": ["auto"]}
    for term in terms if compute_type_in_every_term else terms[-1:]:
        term["matchExpressions"].append(auto)
    return terms


def _efa(v: dict) -> PodScheduling:
    # templates/daemonset.yaml: CriticalAddonsOnly first, then .Values.tolerations; nodeSelector from
    # .Values.nodeSelector; one required term per supportedInstanceLabels key, each `key In values` and
    # `eks.amazonaws.com/compute-type NotIn [auto]`.
    return PodScheduling(v.get("nodeSelector") or {},
                         {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": _instance_label_terms(v, True)}}},
                         [{"key": "CriticalAddonsOnly", "operator": "Exists"}, *(v.get("tolerations") or [])])


def _dranet(v: dict) -> PodScheduling:
    # aws-dranet templates/daemonset.yaml: tolerations CriticalAddonsOnly, then .Values.tolerations; nodeSelector
    # from .Values.nodeSelector; one required term per supportedInstanceLabels key (`key In values`), the
    # compute-type expression written after the range, so in the last term only.
    return PodScheduling(v.get("nodeSelector") or {},
                         {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": _instance_label_terms(v, False)}}},
                         [{"key": "CriticalAddonsOnly", "operator": "Exists"}, *(v.get("tolerations") or [])])


def _nvidia_dra_validate(v: dict) -> None:
    # templates/validation.yaml: GPU allocation only with gpuResourcesEnabledOverride (not beside the GPU device plugin).
    if v["resources"]["gpus"]["enabled"] and not v["gpuResourcesEnabledOverride"]:
        raise ChartRefuses("resources.gpus.enabled needs gpuResourcesEnabledOverride")


def _nvidia_dra(v: dict) -> PodScheduling | None:
    # templates/kubeletplugin.yaml: only `if or .Values.resources.computeDomains.enabled .Values.resources.gpus.enabled`;
    # then `with .Values.kubeletPlugin.nodeSelector`, `.affinity`, `.tolerations`. It publishes GPUs only with gpus enabled.
    if not v["resources"]["gpus"]["enabled"]:
        return None
    k = v["kubeletPlugin"]
    return PodScheduling(k.get("nodeSelector") or {}, k.get("affinity") or {}, k.get("tolerations") or [])


def _neuron_placeholders(v: dict, affinity: dict) -> dict:
    # The affinity helpers put the instance-type label for __INSTANCE_TYPE_KEY__ and .Values.neuronInstances for
    # __NEURON_INSTANCES__ (templates/_helpers.tpl, `neuron-device-plugin.affinity`; the DRA driver's
    # `neuron-dra-driver.affinity` is taken to do the same: its default affinity uses the same placeholders).
    def fill(node):
        if isinstance(node, dict):
            return {k: fill(x) for k, x in node.items()}
        if isinstance(node, list):
            return [fill(x) for x in node]
        return {"__INSTANCE_TYPE_KEY__": "node.kubernetes.io/instance-type",
                "__NEURON_INSTANCES__": list(v.get("neuronInstances") or [])}.get(node, node) if isinstance(node, str) else node
    return fill(affinity)


def _neuron_validate(v: dict) -> None:
    # templates/_helpers.tpl, neuron-helm-chart.validateConfig (chart 1.9.0).
    if v["draDriver"]["enabled"] and v["devicePlugin"]["enabled"]:
        raise ChartRefuses("DRA driver and device plugin cannot both be enabled")


def _neuron(v: dict) -> PodScheduling | None:
    # device-plugin/device-plugin-daemonset.yaml: only `if .Values.devicePlugin.enabled` (chart 1.5.0 on); then
    # .Values.devicePlugin.{nodeSelector, tolerations} and its affinity through the helper.
    dp = v["devicePlugin"]
    if not dp["enabled"]:
        return None
    return PodScheduling(dp.get("nodeSelector") or {}, _neuron_placeholders(v, dp.get("affinity") or {}), dp.get("tolerations") or [])


def _neuron_dra(v: dict) -> PodScheduling | None:
    # dra-driver/dra-driver-daemonset.yaml (at 97e1b7d3): only `if .Values.draDriver.enabled`; then
    # .Values.draDriver.{tolerations, nodeSelector} and its affinity through the helper.
    d = v["draDriver"]
    if not d["enabled"]:
        return None
    return PodScheduling(d.get("nodeSelector") or {}, _neuron_placeholders(v, d.get("affinity") or {}), d.get("tolerations") or [])


@dataclass(frozen=True)
class DaemonSet:
    device: str | None  # efa, gpu or neuron: what its pods manage on a node; None: a node agent that every node runs
    how: str  # "plugin" (a device plugin), "dra" (a DRA driver's kubelet plugin) or "agent"
    scheduling: Callable[[dict], PodScheduling | None]  # None: the values render no such DaemonSet


def _fsx_csi_node(v: dict) -> PodScheduling:
    # templates/node-daemonset.yaml: nodeSelector kubernetes.io/os: linux plus .Values.node.nodeSelector; with
    # .Values.node.tolerateAllTaints one toleration `operator: Exists`, else .Values.node.tolerations and the driver's
    # own not-ready taint; affinity from .Values.node.affinity.
    node = v["node"]
    tolerations = ([{"operator": "Exists"}] if node.get("tolerateAllTaints")
                   else [*(node.get("tolerations") or []), {"key": "fsx.csi.aws.com/agent-not-ready", "operator": "Exists"}])
    return PodScheduling({"kubernetes.io/os": "linux", **(node.get("nodeSelector") or {})}, node.get("affinity") or {}, tolerations)


@dataclass(frozen=True)
class Chart:
    directory: str  # under tests/data/helm
    daemonsets: tuple[DaemonSet, ...]
    validate: Callable[[dict], None] = lambda values: None

    def defaults(self) -> dict:
        path = HELM_DATA / self.directory / "values.yaml"
        assert path.is_file(), f"{path} is missing: tests/data/helm/SOURCES.md names its repository, commit and path"
        return yaml.safe_load(path.read_text())

    def pods(self, values: dict) -> list[tuple[DaemonSet, PodScheduling | None]]:
        """Each DaemonSet's pod, for our values merged into the chart's defaults (ChartRefuses if the chart would)."""
        merged = coalesce(self.defaults(), values)
        self.validate(merged)
        return [(d, d.scheduling(merged)) for d in self.daemonsets]


CHARTS = {
    "aws-efa-k8s-device-plugin": Chart("aws-efa-k8s-device-plugin-v0.5.30", (DaemonSet("efa", "plugin", _efa),)),
    "nvidia-device-plugin": Chart("nvidia-device-plugin-0.20.0", (DaemonSet("gpu", "plugin", _nvidia),)),
    "oci://public.ecr.aws/neuron/neuron-helm-chart": Chart(
        "neuron-helm-chart-1.9.0", (DaemonSet("neuron", "plugin", _neuron), DaemonSet("neuron", "dra", _neuron_dra)), _neuron_validate),
    "aws-dranet": Chart("aws-dranet-1.0.0", (DaemonSet("efa", "dra", _dranet),)),
    "oci://registry.k8s.io/dra-driver-nvidia/charts/dra-driver-nvidia-gpu": Chart(
        "dra-driver-nvidia-gpu-0.4.1", (DaemonSet("gpu", "dra", _nvidia_dra),), _nvidia_dra_validate),
    "aws-fsx-csi-driver": Chart("aws-fsx-csi-driver-1.17.0", (DaemonSet(None, "agent", _fsx_csi_node),)),
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


def schedules(pod: PodScheduling | None, labels: dict[str, str], taints: list[dict]) -> bool:
    if pod is None:
        return False
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
