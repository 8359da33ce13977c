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
    release: str  # our release's resource name
    directory: str  # under tests/data/helm
    scheduling: Callable[[dict], PodScheduling]
    accelerator: str | None  # the accelerator whose nodes it must reach; None for the EFA plugin
    everywhere: bool = False  # a node agent every node runs (the FSx CSI driver's node plugin)

    def defaults(self) -> dict:
        return yaml.safe_load((HELM_DATA / self.directory / "values.yaml").read_text())


CHARTS = {
    "aws-efa-k8s-device-plugin": Chart("eks-efa-device-plugin", "aws-efa-k8s-device-plugin-v0.5.30", _efa, None),
    "nvidia-device-plugin": Chart("eks-nvidia-device-plugin", "nvidia-device-plugin-0.17.1", _nvidia, "gpu"),
    "oci://public.ecr.aws/neuron/neuron-helm-chart": Chart("eks-neuron-device-plugin", "neuron-helm-chart-1.1.2", _neuron, "neuron"),
    "aws-fsx-csi-driver": Chart("eks-fsx-csi-driver", "aws-fsx-csi-driver-1.17.0", _fsx_csi_node, None, everywhere=True),
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
