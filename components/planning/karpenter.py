"""A fleet as Karpenter launches it: its EC2NodeClass (how a node is built: the EFA interfaces from
`efa.py`, placement group, capacity reservation, AMI, boot script, security groups, subnet, role) and
its NodePool (which nodes, with what labels and taints, how many, when they go).

Facts about Karpenter, with their sources and versions, are in `components/data/karpenter.json`.
Pure: no Pulumi import; values only AWS knows at deploy time are passed in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import bootstrap
from .plan import FLEET_TAG, STACK_TAG, FleetPlan

DATA = Path(__file__).resolve().parent.parent / "data" / "karpenter.json"
AWS_DATA = DATA.with_name("karpenter_aws.json")
NODE_CLASS_API = "karpenter.k8s.aws/v1"
NODE_POOL_API = "karpenter.sh/v1"
NODE_OVERLAY_API = "karpenter.sh/v1alpha1"
# Why a node may go: only when empty. A training node is never drained for drift (a new AMI) or to
# pack pods tighter; it takes a new AMI when it is next launched.
DISRUPTION = {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "10m", "budgets": [{"nodes": "0", "reasons": ["Drifted"]}]}


@lru_cache(maxsize=1)
def facts() -> dict:
    return json.loads(DATA.read_text())


@dataclass(frozen=True)
class NodeClassInputs:
    """What only the deploy knows: the node role's name, the fleet's subnet, the security groups the node
    groups use, the placement group's name, and the boot script (user data) as text."""

    role: str
    subnet_id: str
    security_group_ids: list[str]
    placement_group: str | None
    user_data: str


def node_class_name(fp: FleetPlan) -> str:
    return fp.name


def ec2_node_class(fp: FleetPlan, stack: str, given: NodeClassInputs) -> dict:
    """The fleet's EC2NodeClass: every interface as the launch templates lay them out (efa.interfaces)."""
    f = fp.config
    spec: dict = {
        "role": given.role,
        "subnetSelectorTerms": [{"id": given.subnet_id}],
        "securityGroupSelectorTerms": [{"id": sg} for sg in given.security_group_ids],
        # The alias picks the EKS-optimized AL2023 AMI and its NVIDIA or Neuron variant for the type.
        "amiSelectorTerms": [{"id": f.ami}] if f.ami else [{"alias": "al2023@latest"}],
        "userData": given.user_data,
        "metadataOptions": {"httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": f.metadata_hop_limit},
        "blockDeviceMappings": [{"deviceName": "/dev/xvda", "rootVolume": True,
                                 "ebs": {"volumeSize": f"{f.root_volume_gib}Gi", "volumeType": "gp3", "encrypted": True,
                                         "deleteOnTermination": True}}],
        "associatePublicIPAddress": False,
        "tags": {FLEET_TAG: f.name, STACK_TAG: stack},  # on its instances, as on a launch template's
    }
    if f.ami:
        spec["amiFamily"] = "AL2023"  # required without an alias: it decides how user data is merged
    if fp.max_pods is not None:
        spec["kubelet"] = {"maxPods": fp.max_pods}
    if fp.efa_devices:
        spec["networkInterfaces"] = [{"networkCardIndex": i.network_card_index, "deviceIndex": i.device_index,
                                      "interfaceType": i.interface_type} for i in fp.interfaces]
    if given.placement_group is not None:
        spec["placementGroupSelector"] = {"name": given.placement_group}
    if f.capacity.reservation_id:
        spec["capacityReservationSelectorTerms"] = [{"id": f.capacity.reservation_id}]
    return {"apiVersion": NODE_CLASS_API, "kind": "EC2NodeClass", "metadata": {"name": node_class_name(fp)}, "spec": spec}


def node_pool(fp: FleetPlan) -> dict:
    """The fleet's NodePool: its one instance type in its one AZ, on the capacity it names, with the
    fleet's labels and taints, at most nodes.max nodes."""
    f = fp.config
    capacity = "on-demand" if f.capacity.type == "on-demand" else "reserved"
    return {
        "apiVersion": NODE_POOL_API,
        "kind": "NodePool",
        "metadata": {"name": fp.name},
        "spec": {
            "template": {
                "metadata": {"labels": dict(fp.node_labels)},
                "spec": {
                    "nodeClassRef": {"group": NODE_CLASS_API.split("/")[0], "kind": "EC2NodeClass", "name": node_class_name(fp)},
                    "requirements": [
                        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [f.instance_type]},
                        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [f.availability_zone]},
                        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": [capacity]},
                    ],
                    "taints": [dict(t) for t in fp.node_taints],
                    "expireAfter": "Never",
                },
            },
            "limits": {"nodes": f.nodes.maximum},
            "disruption": DISRUPTION,
        },
    }


def node_overlays(fleets: list[FleetPlan]) -> list[dict]:
    """Karpenter's scheduling model of an instance type has no hugepages (pkg/providers/instancetype/types.go
    computeCapacity, v1.11.0 to v1.14.1), so a pending EFA pod that asks for hugepages-2Mi would never launch
    a node. A NodeOverlay (alpha, featureGates.nodeOverlay) adds the pages the boot script reserves, one per
    instance type: two overlays of equal weight on one type conflict and neither applies (docs, NodeOverlays)."""
    types = sorted({fp.config.instance_type for fp in fleets if fp.efa_devices})
    return [{
        "apiVersion": NODE_OVERLAY_API,
        "kind": "NodeOverlay",
        "metadata": {"name": f"hugepages-{t.replace('.', '-')}"},
        "spec": {
            "requirements": [{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [t]}],
            # What the boot script reserves at the least (it only ever raises the AMI's count), and what EFA pods ask for.
            "capacity": {"hugepages-2Mi": f"{bootstrap.HUGEPAGES_MIB}Mi"},
        },
    } for t in types]


@lru_cache(maxsize=1)
def aws_side() -> dict:
    """The controller's IAM policies and the interruption events (tools/refresh_karpenter.py)."""
    return json.loads(AWS_DATA.read_text())


def controller_policies(region: str, account: str, cluster: str, queue_arn: str, node_role_arn: str) -> dict[str, str]:
    """Karpenter's controller policies as its template gives them, for this cluster, queue and node role."""
    values = {"${AWS::Partition}": "aws", "${AWS::Region}": region, "${AWS::AccountId}": account, "${ClusterName}": cluster,
              "${KarpenterInterruptionQueue.Arn}": queue_arn, "${KarpenterNodeRole.Arn}": node_role_arn}
    out = {}
    for name, document in aws_side()["policies"].items():
        text = json.dumps(document, sort_keys=True)
        for ref, value in values.items():
            text = text.replace(ref, value)
        if "${" in text:
            raise ValueError(f"Karpenter's {name} names a value the stack does not fill: {text[text.index('${'):][:40]}")
        out[name] = text
    return out


def helm_values(cluster: str, queue_name: str) -> dict:
    """Our values for the Karpenter chart (merged into its defaults: charts/karpenter/values.yaml at the tag)."""
    return {
        "settings": {"clusterName": cluster, "interruptionQueue": queue_name,
                     # NodeOverlays (hugepages in the scheduling model) are alpha and off by default.
                     "featureGates": {"nodeOverlay": True}},
    }
