"""The plan: what a validated stack config works out to before any resource
exists. Per fleet the instance facts, the EFA layout and what it costs in
addresses; for the VPC the subnets. Components build from this; the offline
plan prints it. Pure: no Pulumi import.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import addressing, bootstrap, efa
from .catalog import Catalog, InstanceType
from .config import FleetConfig, StackConfig, address_plan, fleet_addresses_per_node


# The public SSM parameters of the base AMIs, which carry the drivers and the EFA installer, by accelerator kind.
# GPU: AWS's DLAMI parameters, /aws/service/deeplearning/ami/$arch/$ami_type/latest/ami-id (AWS Deep Learning AMIs
# developer guide, "Finding the ID of a DLAMI", read December 2026). Neuron: the Neuron DLAMIs publish theirs under
# /aws/service/neuron/dlami/<kind>/<os>/latest/image_id, x86_64 only, the base AMI's prefix being
# /aws/service/neuron/dlami/base/amazon-linux-2023 (Neuron DLAMI User Guide, aws-neuron/aws-neuron-sdk dlami/index.rst
# @1043931f and deploy/environments/dlami.rst of Neuron 2.32.0; the same prefix since SDK 2.21). There is no
# base-neuron-amazon-linux-2023 type under /aws/service/deeplearning/ami in either guide.
AMI_PARAMETERS = {
    "gpu": "/aws/service/deeplearning/ami/{arch}/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id",
    "neuron": "/aws/service/neuron/dlami/base/amazon-linux-2023/latest/image_id",
}


def default_ami(itype: InstanceType) -> str:
    """`resolve:ssm:` lets EC2 resolve the current base AMI at launch, so a new AMI
    release never changes the launch template (and never replaces nodes)."""
    kind = itype.accelerator.kind if itype.accelerator else "gpu"  # the GPU base AMI also serves CPU-only EFA types
    return "resolve:ssm:" + AMI_PARAMETERS[kind].format(arch=itype.architecture)


FLEET_TAG, STACK_TAG = "efa-infra:fleet", "efa-infra:stack"  # on instances: the launch script finds peers by them
FLEET_LABEL = "efa-infra/fleet"
ACCELERATOR_LABEL = "efa-infra/accelerator"  # the GPU and Neuron device plugins select nodes by it
EFA_LABEL = "vpc.amazonaws.com/efa.present"  # the EFA device plugin selects nodes by it


def accelerator_taint(itype: InstanceType) -> dict[str, str] | None:
    """The taint that keeps non-accelerator pods off accelerator nodes."""
    if not itype.accelerator:
        return None
    return {"key": itype.accelerator.resource_name, "value": "true", "effect": "NoSchedule"}


@dataclass(frozen=True)
class FleetPlan:
    config: FleetConfig
    itype: InstanceType
    interfaces: list[efa.Interface]
    summary: efa.LayoutSummary
    on_eks: bool
    addresses_per_node: int
    max_pods: int | None  # on EKS only

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def efa_devices(self) -> int:
        return self.summary.efa_devices

    @property
    def node_labels(self) -> dict[str, str]:
        # No instance-type label: the kubelet sets node.kubernetes.io/instance-type, and EKS refuses its prefix.
        labels = {FLEET_LABEL: self.name}
        if self.efa_devices:
            labels[EFA_LABEL] = "true"
        if self.itype.accelerator:
            labels[ACCELERATOR_LABEL] = self.itype.accelerator.kind
        return labels

    @property
    def auto_repair(self) -> bool:
        """EKS node auto repair: on for accelerator fleets unless the config says otherwise."""
        return self.config.auto_repair if self.config.auto_repair is not None else self.itype.accelerator is not None

    @property
    def boot(self) -> bootstrap.Node:
        accelerator = (self.itype.accelerator.kind, self.itype.accelerator.count) if self.itype.accelerator else None
        return bootstrap.Node(self.name, self.efa_devices, accelerator, self.config.boot_check, self.on_eks,
                              self.max_pods, self.node_labels, self.node_taints)

    @property
    def node_taints(self) -> list[dict[str, str]]:
        if self.config.taints is not None:
            return [t.model_dump() for t in self.config.taints]
        taint = accelerator_taint(self.itype)
        return [taint] if taint else []


@dataclass(frozen=True)
class StackPlan:
    config: StackConfig
    catalog: Catalog
    fleets: list[FleetPlan]
    subnets: list[addressing.Subnet]

    @property
    def node_monitoring_agent(self) -> bool:
        """The EKS node monitoring agent add-on: on when a fleet has accelerators unless the config says otherwise."""
        wanted = self.config.eks.node_monitoring_agent
        return wanted if wanted is not None else any(fp.itype.accelerator for fp in self.fleets)

    def fleet_subnet(self, fp: FleetPlan) -> addressing.Subnet:
        """The subnet a fleet's nodes take their addresses from."""
        kind = "secondary" if fp.config.subnet == "secondary" else "private"
        return next(s for s in self.subnets if s.kind == kind and s.az == fp.config.availability_zone)

    def fleet(self, name: str) -> FleetPlan:
        return next(f for f in self.fleets if f.name == name)


def fleet_plan(f: FleetConfig, cat: Catalog, on_eks: bool) -> FleetPlan:
    itype = cat.get(f.instance_type)
    interfaces = efa.node_interfaces(itype, f.efa_layout, f.efa)
    summary = efa.summarize(itype, interfaces)
    return FleetPlan(
        config=f,
        itype=itype,
        interfaces=interfaces,
        summary=summary,
        on_eks=on_eks,
        addresses_per_node=fleet_addresses_per_node(f, cat, on_eks),
        max_pods=addressing.max_pods(itype, summary) if on_eks else None,
    )


@dataclass(frozen=True)
class JobTarget:
    """Where a job runs: one of the stack's fleets, or a cluster it does not manage."""

    name: str
    itype: InstanceType
    efa_devices: int  # per node, all the type's devices in the fleet's layout; 0 for a fleet without EFA
    platform: str  # "eks" (Kubernetes manifests) or "ec2" (node scripts)
    default_nodes: int
    node_selector: dict[str, str]  # Kubernetes labels that pick its nodes


def job_target(cfg: StackConfig, name: str) -> JobTarget:
    cat = cfg.catalog()
    fleet = next((f for f in cfg.fleets if f.name == name), None)
    if fleet is not None:
        fp = fleet_plan(fleet, cat, cfg.eks.enabled)
        selector = {FLEET_LABEL: name}
        if fp.efa_devices:
            selector[EFA_LABEL] = "true"
        return JobTarget(name, fp.itype, fp.efa_devices, "eks" if fp.on_eks else "ec2", fleet.nodes.desired, selector)
    cluster = next(c for c in cfg.clusters if c.name == name)
    itype = cat.get(cluster.ec2_type)
    # Unmanaged nodes carry none of our labels; EKS and HyperPod both label the instance type
    # (HyperPod in its ml. form, as the cluster config names it).
    return JobTarget(name, itype, itype.maximum_efa_interfaces, "eks", cluster.nodes,
                     {"node.kubernetes.io/instance-type": cluster.instance_type})


# The kinds a change must never replace or delete unasked (diff) and that protected stacks mark protected.
PROTECTED_TYPES = {
    "aws:ec2/vpc:Vpc": "VPC",
    "aws:ec2/vpcIpv4CidrBlockAssociation:VpcIpv4CidrBlockAssociation": "VPC CIDR block",
    "aws:ec2/subnet:Subnet": "subnet",
    "aws:ec2/natGateway:NatGateway": "NAT gateway",
    "eks:index:Cluster": "EKS cluster",
    "aws:eks/nodeGroup:NodeGroup": "node group",
}


def protected(cfg: StackConfig, stack: str) -> bool:
    """Whether the network and the cluster are protected: `protect`, by default on for production stacks (prod*)."""
    return cfg.protect if cfg.protect is not None else stack.startswith("prod")


def build(cfg: StackConfig) -> StackPlan:
    """The plan of a config that `config.load` accepted."""
    cat = cfg.catalog()
    fleets = [fleet_plan(f, cat, cfg.eks.enabled) for f in cfg.fleets]
    existing = cfg.network.existing
    if existing:
        need = {az: 0 for az in existing.private_subnet_ids}
        by_az: dict[str, list[str]] = {}
        for fp in fleets:
            az = fp.config.availability_zone
            need[az] += fp.addresses_per_node * fp.config.nodes.maximum
            by_az.setdefault(az, []).append(fp.name)
        subnets = [addressing.Subnet("private", az, None, need[az], by_az.get(az, []), existing_id=sid)
                   for az, sid in sorted(existing.private_subnet_ids.items())]
    elif fleets:
        subnets = address_plan(cfg, cat)
    else:
        subnets = []  # nothing to hold: a stack of jobs for clusters it does not manage
    return StackPlan(cfg, cat, fleets, subnets)
