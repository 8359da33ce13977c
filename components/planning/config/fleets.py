"""The fleets section, and instance types declared for types the shipped AWS data lacks."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field, ValidationInfo, field_validator, model_validator

from .. import zones
from .base import NAME_PATTERN, Model, known_type
from .data import FsxConfig


class NodeCounts(Model):
    min: int = Field(0, ge=0, description="Fewest nodes the fleet scales to.")
    desired: int = Field(..., ge=0, description="Nodes to run now.")
    max: int | None = Field(None, ge=1, description="Most nodes the fleet may grow to; subnets are sized for it. Default: desired.")

    @model_validator(mode="after")
    def _order(self) -> "NodeCounts":
        top = self.maximum
        if not self.min <= self.desired <= top:
            raise ValueError(f"need min <= desired <= max, got min={self.min}, desired={self.desired}, max={top}")
        if top < 1:
            raise ValueError("max must be at least 1")
        return self

    @property
    def maximum(self) -> int:
        return self.desired if self.max is None else self.max


class PlacementConfig(Model):
    mode: Literal["cluster", "existing", "none"] | None = Field(
        None,
        description="cluster: create a cluster placement group; existing: use the group named in groupName; "
        "none: no group (a capacity reservation or block decides placement). "
        "Default: cluster, or none when capacity.type is a reservation or capacity block.",
    )
    group_name: str | None = Field(None, description="The existing placement group, for mode: existing.")


class CapacityConfig(Model):
    type: Literal["on-demand", "reservation", "capacity-block"] = Field(
        "on-demand",
        description="on-demand; reservation: target an On-Demand Capacity Reservation (or a resource group of them); "
        "capacity-block: an EC2 Capacity Block for ML.",
    )
    reservation_id: str | None = Field(
        None, pattern=r"^cr-[0-9a-f]{8,17}$", description="The capacity reservation or block id (cr-...), for reservation and capacity-block.",
    )
    reservation_group_arn: str | None = Field(
        None, pattern=r"^arn:aws[a-z-]*:resource-groups:[a-z0-9-]+:[0-9]{12}:group/[A-Za-z0-9_.-]{1,300}$",
        description="reservation: instead of reservationId, a capacity-reservation resource group "
        "(arn:aws:resource-groups:REGION:ACCOUNT:group/NAME); launches use any reservation in it, and every one is checked.",
    )
    instance_match: Literal["targeted", "open"] = Field(
        "targeted",
        description="reservation: the instance eligibility the reservation must have. targeted (default): only launches that "
        "name it use it, so no other workload of the account takes its capacity; open: any matching instance may use it. "
        "A reservation of the other kind is refused at deploy time.",
    )
    needed_until: AwareDatetime | None = Field(
        None, description="reservation: the time the fleet is needed until, with its zone (quote it); a reservation that ends "
        "before it is refused at deploy time. Default: not checked (one already ended is refused anyway).",
    )
    start: AwareDatetime | None = Field(
        None, description="capacity-block: when the block starts, with its zone, e.g. '2026-12-14T11:30:00Z' (quote it). "
        "Default: read from the reservation at deploy time.",
    )
    end: AwareDatetime | None = Field(None, description="capacity-block: when the block ends; give it with start.")
    instance_count: int | None = Field(
        None, ge=1, description="reservation and capacity-block: the instances it holds; nodes.max may not exceed it. "
        "Default: read at deploy time.",
    )


class TaintConfig(Model):
    key: str = Field(..., min_length=1, description="Taint key, e.g. nvidia.com/gpu.")
    value: str = Field("true", description="Taint value.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = Field("NoSchedule", description="Taint effect.")


class FleetConfig(Model):
    name: str = Field(..., pattern=NAME_PATTERN, description="Fleet name: lower case, digits and '-', at most 24 characters; used in resource names.")
    instance_type: str = Field(..., description="EC2 instance type, e.g. p5.48xlarge. Must be in the catalog or declared under efa-infra:instanceTypes.")
    availability_zone: str = Field(..., description="The one AZ the fleet runs in (EFA traffic does not cross AZs), e.g. us-east-1a.")
    nodes: NodeCounts = Field(..., description="Node counts: min, desired, max.")
    efa: bool = Field(True, description="Attach every EFA device the instance type has.")
    efa_layout: Literal["ena-primary", "efa-primary"] = Field(
        "ena-primary",
        description="ena-primary: ENA primary and efa-only devices (AWS's current recommendation, one IP per node); "
        "efa-primary: the classic layout with EFA on the primary interface.",
    )
    placement: PlacementConfig = Field(default_factory=PlacementConfig, description="Placement group for the fleet.")
    capacity: CapacityConfig = Field(default_factory=CapacityConfig, description="Where the capacity comes from.")
    ami: str | None = Field(None, pattern=r"^ami-[0-9a-f]{8,17}$", description="AMI id to pin. Default: AWS's current Deep Learning Base GPU AMI, resolved by EC2 at launch.")
    ami_release: str | None = Field(
        None, pattern=r"^v\d{8}$",
        description="On EKS with a pinned ami: the amazon-eks-ami release it was built from (the end of its name, e.g. "
        "v20251023). The boot check's taint goes in a nodeadm drop-in, which releases before v20251023 ignore: with "
        "bootCheck on, a pinned AMI needs a known release of v20251023 or later.",
    )
    root_volume_gib: int = Field(200, ge=20, le=16384, description="Size of the encrypted gp3 root volume, GiB.", alias="rootVolumeGiB")
    metadata_hop_limit: int = Field(
        1, ge=1, le=64,
        description="The instance metadata service's hop limit (IMDSv2 is required). 1 (default): only processes on the "
        "node itself reach it, so containers, which sit one hop further, cannot take the node role's credentials "
        "(the VPC CNI and device plugins use the host's network); 2 for containers that need the node's metadata.",
    )
    boot_check: bool = Field(
        True,
        description="Take out a node that boots with fewer EFA devices or accelerators than its type has: on plain EC2 "
        "it marks itself unhealthy in its Auto Scaling group, which replaces it; on EKS it registers with the taint "
        "efa-infra/boot-check (the value says what is missing), so no job lands on it. false: the check only logs.",
    )
    auto_repair: bool | None = Field(
        None,
        description="On EKS, the node group's node auto repair: EKS replaces or reboots nodes whose health conditions fail "
        "(the node monitoring agent reports GPU, Neuron and network faults). Default: on for accelerator fleets.",
    )
    provisioner: Literal["node-group", "karpenter"] = Field(
        "node-group",
        description="On EKS, what launches the fleet's nodes. node-group (default): an EKS managed node group of fixed "
        "min/desired/max; karpenter: a Karpenter NodePool and EC2NodeClass with the same EFA layout, placement group, "
        "capacity, AMI, boot check, labels, taints and security groups, which launches nodes for pending pods (from zero) "
        "up to nodes.max and removes them when empty. Needs a cluster the stack creates and efaLayout ena-primary.",
    )
    subnet: Literal["primary", "secondary"] = Field(
        "primary",
        description="The private subnet of its AZ the fleet uses: primary (in network.vpcCidr) or secondary (in network.secondaryCidr).",
    )
    taints: list[TaintConfig] | None = Field(
        None,
        description="On EKS, the node group's taints. Default: the accelerator's taint "
        "(nvidia.com/gpu=true:NoSchedule or aws.amazon.com/neuron=true:NoSchedule); [] for none.",
    )

    fsx: FsxConfig | None = Field(
        None,
        description="An FSx for Lustre file system for the fleet, in its AZ and subnet, mounted by its nodes (EC2) or "
        "its jobs' pods (EKS). Replacing it loses its data: diff guards it, and production stacks protect it.",
    )

    @field_validator("instance_type")
    @classmethod
    def _known_type(cls, v: str, info: ValidationInfo) -> str:
        return known_type(v, v, info)

    @field_validator("availability_zone")
    @classmethod
    def _in_region(cls, v: str, info: ValidationInfo) -> str:
        region = (info.context or {}).get("region")
        why = zones.refusal(v, region) if isinstance(region, str) else None
        if why:
            raise ValueError(why)
        return v

    @property
    def placement_mode(self) -> str:
        if self.placement.mode is not None:
            return self.placement.mode
        return "cluster" if self.capacity.type == "on-demand" else "none"


class CardSpec(Model):
    index: int = Field(..., ge=0, description="Network card index.")
    maximum_network_interfaces: int = Field(..., ge=1, description="Interfaces the card holds.")
    interface_types: list[Literal["interface", "efa", "efa-only"]] = Field(..., min_length=1, description="Interface types the card accepts.")
    baseline_bandwidth_gbps: float = Field(..., gt=0, description="The card's baseline bandwidth, Gbps.")


class AcceleratorSpec(Model):
    kind: Literal["gpu", "neuron"] = Field(..., description="gpu (NVIDIA) or neuron (Trainium/Inferentia).")
    manufacturer: str = Field("NVIDIA", description="Accelerator manufacturer.")
    name: str = Field(..., description="Accelerator model, e.g. H100.")
    count: int = Field(..., ge=1, description="Accelerators per instance.")
    memory_mib: int = Field(0, ge=0, description="Memory per accelerator, MiB.", alias="memoryMiB")


class InstanceTypeSpec(Model):
    """A type the shipped AWS data lacks, declared with its card layout."""

    architectures: list[Literal["x86_64", "arm64"]] = Field(["x86_64"], description="CPU architectures.")
    vcpus: int = Field(..., ge=1, description="Default vCPUs.")
    memory_mib: int = Field(..., ge=1, description="Memory, MiB.", alias="memoryMiB")
    maximum_network_interfaces: int = Field(..., ge=1, description="Interfaces across all cards.")
    ipv4_addresses_per_interface: int = Field(..., ge=1, description="Private IPv4 addresses per interface.")
    maximum_efa_interfaces: int = Field(..., ge=0, description="EFA devices the type takes (0: no EFA).")
    network_cards: list[CardSpec] = Field(..., min_length=1, description="Network cards, card 0 first.")
    placement_strategies: list[Literal["cluster", "partition", "spread"]] = Field(["cluster", "partition", "spread"], description="Placement strategies the type supports.")
    accelerator: AcceleratorSpec | None = Field(None, description="The accelerators, if any.")

    @model_validator(mode="after")
    def _cards(self) -> "InstanceTypeSpec":
        indices = [c.index for c in self.network_cards]
        if 0 not in indices or len(set(indices)) != len(indices):
            raise ValueError(f"networkCards need card 0 and distinct indices, got {indices}")
        return self
