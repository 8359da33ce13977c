"""What EKS accepts in a managed node group request: its API rules as data,
each with its source, and the checks that apply them.

The config checks use them before anything is registered (a user's taints, a
fleet's AMI type); the test suite applies `node_group_problems` to every node
group request the program sends, with the launch template it names. Shape
checks (botocore) cannot see these: EKS refuses them when it gets them.
Pure: no Pulumi import.
"""

from __future__ import annotations

import base64
import email
from dataclasses import dataclass

import yaml


@dataclass(frozen=True)
class Rule:
    says: str
    source: str


API_REF = "https://docs.aws.amazon.com/eks/latest/APIReference/"
LT_GUIDE = "https://docs.aws.amazon.com/eks/latest/userguide/launch-templates.html"
RULES = {
    "reserved-prefix": Rule(
        "Node group labels and taints may not use the prefixes kubernetes.io/, k8s.io/ or eks.amazonaws.com/ "
        "(\"Label cannot contain reserved prefixes\"); the kubelet sets node.kubernetes.io/instance-type itself",
        "https://github.com/aws/containers-roadmap/issues/1451; https://github.com/eksctl-io/eksctl/issues/4007"),
    "label-length": Rule("A label key and value are 1 to 63 characters each (the whole key, prefix included)",
                         API_REF + "API_CreateNodegroup.html (labelKey, labelValue; botocore eks model shapes of those names)"),
    "taint-length": Rule("A taint key is 1 to 63 characters, its value 0 to 63", API_REF + "API_Taint.html"),
    "taint-effect": Rule("A taint's effect is NO_SCHEDULE, NO_EXECUTE or PREFER_NO_SCHEDULE", API_REF + "API_Taint.html"),
    "taint-count": Rule("At most 50 taints per node group",
                        "terraform-provider-aws docs, eks_node_group taint (carried into pulumi-aws NodeGroupArgs.taints)"),
    "capacity-type": Rule("capacityType is ON_DEMAND, SPOT or CAPACITY_BLOCK", API_REF + "API_CreateNodegroup.html"),
    "lt-no-profile": Rule("The launch template must not name an IAM instance profile: the node group's role is used",
                          LT_GUIDE + " (Launch template configuration basics)"),
    "lt-no-subnet": Rule("The launch template's network interfaces must not name a subnet: the node group's subnets are used",
                         LT_GUIDE + " (Launch template configuration basics)"),
    "ami-type-xor-image": Rule(
        "With an AMI in the launch template the node group must not set amiType; without one it must set the AMI type "
        "EKS offers for the node's accelerator and architecture",
        LT_GUIDE + " (Specifying an AMI); " + API_REF + "API_CreateNodegroup.html (amiType)"),
    "ami-type-for-node": Rule(
        "AL2023 AMI types: NVIDIA for NVIDIA GPUs (x86_64 and arm64), NEURON for Inferentia and Trainium (x86_64 only), "
        "STANDARD otherwise",
        "https://docs.aws.amazon.com/eks/latest/userguide/eks-optimized-ami.html; botocore eks model AMITypes"),
    "user-data-mime": Rule(
        "Without an AMI in the launch template, user data must be MIME multi-part: EKS merges its own bootstrap into it",
        LT_GUIDE + " (Amazon EC2 user data)"),
    "user-data-nodeadm": Rule(
        "With an AMI in the launch template EKS adds no bootstrap: an AL2023 AMI's user data must hold a nodeadm "
        "NodeConfig with spec.cluster name, apiServerEndpoint, certificateAuthority and cidr (the service CIDR)",
        LT_GUIDE + " (Specifying an AMI); https://awslabs.github.io/amazon-eks-ami/nodeadm/"),
    "capacity-block": Rule(
        "A node group on a Capacity Block sets capacityType CAPACITY_BLOCK, and its launch template has the market "
        "type capacity-block and targets the block's reservation id; CAPACITY_BLOCK needs both",
        "https://docs.aws.amazon.com/eks/latest/userguide/capacity-blocks-mng.html"),
}

RESERVED_PREFIXES = ("kubernetes.io/", "k8s.io/", "eks.amazonaws.com/")
LABEL_KEY_CHARS, LABEL_VALUE_CHARS = (1, 63), (1, 63)
TAINT_KEY_CHARS, TAINT_VALUE_CHARS = (1, 63), (0, 63)
MAX_TAINTS = 50
TAINT_EFFECTS = {"NoSchedule": "NO_SCHEDULE", "PreferNoSchedule": "PREFER_NO_SCHEDULE", "NoExecute": "NO_EXECUTE"}  # Kubernetes -> EKS API
CAPACITY_TYPES = ("ON_DEMAND", "SPOT", "CAPACITY_BLOCK")
AMI_TYPES = {("gpu", "x86_64"): "AL2023_x86_64_NVIDIA", ("gpu", "arm64"): "AL2023_ARM_64_NVIDIA",
             ("neuron", "x86_64"): "AL2023_x86_64_NEURON", (None, "x86_64"): "AL2023_x86_64_STANDARD",
             (None, "arm64"): "AL2023_ARM_64_STANDARD"}
NODE_CONFIG_TYPE = "application/node.eks.aws"  # the MIME part nodeadm reads its NodeConfig from
NODEADM_CLUSTER_KEYS = ("name", "apiServerEndpoint", "certificateAuthority", "cidr")


def reserved(key: str) -> bool:
    """A key EKS refuses: one of its reserved prefixes, or a subdomain of one (node.kubernetes.io/...)."""
    prefix = key.split("/", 1)[0] + "/" if "/" in key else ""
    return any(prefix == p or prefix.endswith("." + p) for p in RESERVED_PREFIXES)


def _length(what: str, text: str, bounds: tuple[int, int]) -> str | None:
    low, high = bounds
    return None if low <= len(text) <= high else f"{what} {text!r} has {len(text)} characters; EKS takes {low} to {high}"


def label_problems(labels: dict[str, str]) -> list[tuple[str, str]]:
    """(rule id, message) for each label EKS would refuse."""
    out = []
    for key, value in labels.items():
        if reserved(key):
            out.append(("reserved-prefix", f"label {key!r} uses a prefix EKS reserves ({', '.join(RESERVED_PREFIXES)})"))
        for problem in (_length("label key", key, LABEL_KEY_CHARS), _length("label value", value, LABEL_VALUE_CHARS)):
            if problem:
                out.append(("label-length", problem))
    return out


def taint_problems(key: str, value: str) -> list[tuple[str, str, str]]:
    """(field: key or value, rule id, message) for a taint EKS would refuse; its effect and the count are
    checked by the caller, which holds them in its own form."""
    out = []
    if reserved(key):
        out.append(("key", "reserved-prefix", f"taint key {key!r} uses a prefix EKS reserves ({', '.join(RESERVED_PREFIXES)})"))
    for field, problem in (("key", _length("taint key", key, TAINT_KEY_CHARS)), ("value", _length("taint value", value, TAINT_VALUE_CHARS))):
        if problem:
            out.append((field, "taint-length", problem))
    return out


def ami_type(accelerator: str | None, architecture: str) -> str | None:
    """The AL2023 AMI type EKS offers for the node, or None where it offers none."""
    return AMI_TYPES.get((accelerator, architecture))


def _user_data_parts(user_data_b64: str | None) -> tuple[bool, list[dict]]:
    """(is MIME multi-part, the NodeConfig documents in it)."""
    if not user_data_b64:
        return False, []
    msg = email.message_from_string(base64.b64decode(user_data_b64).decode())
    if not msg.is_multipart():
        return False, []
    return True, [yaml.safe_load(p.get_payload()) for p in msg.get_payload() if p.get_content_type() == NODE_CONFIG_TYPE]


def node_group_problems(node_group: dict, launch_template: dict | None) -> list[str]:
    """A node group request and the launch template it names, as the provider receives
    them (camelCase inputs), checked against RULES; each problem names its rule."""
    found: list[tuple[str, str]] = list(label_problems(node_group.get("labels") or {}))
    taints = node_group.get("taints") or []
    if len(taints) > MAX_TAINTS:
        found.append(("taint-count", f"{len(taints)} taints"))
    for t in taints:
        found.extend((rule, message) for _, rule, message in taint_problems(t["key"], t.get("value", "")))
        if t["effect"] not in TAINT_EFFECTS.values():
            found.append(("taint-effect", f"taint {t['key']!r} has effect {t['effect']!r}"))
    capacity = node_group.get("capacityType", "ON_DEMAND")
    if capacity not in CAPACITY_TYPES:
        found.append(("capacity-type", f"capacityType {capacity!r}"))
    lt = launch_template or {}
    if lt.get("iamInstanceProfile"):
        found.append(("lt-no-profile", "the launch template names an instance profile"))
    if any(i.get("subnetId") for i in lt.get("networkInterfaces") or []):
        found.append(("lt-no-subnet", "a launch template network interface names a subnet"))
    image, given_type = lt.get("imageId"), node_group.get("amiType")
    if image and given_type:
        found.append(("ami-type-xor-image", f"amiType {given_type!r} beside the launch template's image {image!r}"))
    if not image and not given_type:
        found.append(("ami-type-xor-image", "no amiType and no image in the launch template"))
    multipart, node_configs = _user_data_parts(lt.get("userData"))
    if launch_template is not None and not image and lt.get("userData") and not multipart:
        found.append(("user-data-mime", "user data is not MIME multi-part"))
    if image:
        clusters = [(c.get("spec") or {}).get("cluster") or {} for c in node_configs]
        if not any(all(c.get(k) for k in NODEADM_CLUSTER_KEYS) for c in clusters):
            found.append(("user-data-nodeadm", f"no NodeConfig with spec.cluster {', '.join(NODEADM_CLUSTER_KEYS)} in the user data"))
    block_lt = (lt.get("instanceMarketOptions") or {}).get("marketType") == "capacity-block"
    target = ((lt.get("capacityReservationSpecification") or {}).get("capacityReservationTarget") or {}).get("capacityReservationId")
    if (capacity == "CAPACITY_BLOCK") != block_lt or (capacity == "CAPACITY_BLOCK" and not target):
        found.append(("capacity-block", f"capacityType {capacity}, launch template market type "
                      f"{'capacity-block' if block_lt else 'none'}, reservation target {target or 'none'}"))
    return [f"{message} [{rule}: {RULES[rule].says}; source: {RULES[rule].source}]" for rule, message in found]
