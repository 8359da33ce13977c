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
    device: str  # efa, gpu or neuron: what its pods manage on a node
    how: str  # "plugin" (a device plugin) or "dra" (a DRA driver's kubelet plugin)
    scheduling: Callable[[dict], PodScheduling | None]  # None: the values render no such DaemonSet


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
