"""The stack config: pydantic models, loading, and every check made before
anything is created.

Keys live under the project's namespace (`efa-infra:network`,
`efa-infra:fleets`, ...) and `aws:region`, as `pulumi config` writes them.
`load()` returns a validated `StackConfig` or raises `ConfigError` listing every
problem at once, each with its key path, the bad value and what would be valid.
The same models give the JSON Schema for editors. Pure: no Pulumi import.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from pydantic.alias_generators import to_camel

from . import addressing, capacity_window, efa, eks_rules
from .bootstrap import HUGEPAGES_MIB, POD_MEMORY_SHARE, pod_memory_gib
from .catalog import Catalog, InstanceType, UnknownInstanceType, from_data, regions

NAMESPACE = "efa-infra"
SECTIONS = ("network", "fleets", "instanceTypes", "eks", "clusters", "jobs", "protect")
NAME_PATTERN = r"^[a-z][a-z0-9-]{0,23}$"
MIN_VPC_CNI = (1, 18, 4)  # first VPC CNI release that handles efa-only interfaces
TRANSPORT_LOGGING = {"NCCL_DEBUG", "NCCL_DEBUG_SUBSYS"}  # what the transport check needs NCCL to print
JOB_OPERATORS = {"pytorchjob": "training-operator", "mpijob": "mpi-operator"}  # job kind -> the operator that runs it
JOB_NAMESPACE = "efa-jobs"
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"  # a DNS label, as Kubernetes names namespaces
# An image reference's tag: after the last ':' that follows the last '/' (a registry's :port comes before a '/').
IMAGE_TAG = re.compile(r"^(?P<repo>[a-z0-9][a-z0-9._/:-]*?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True,
        use_attribute_docstrings=False,
    )


# --- network -----------------------------------------------------------------


class ExistingNetwork(Model):
    vpc_id: str | None = Field(None, pattern=r"^vpc-[0-9a-f]{8,17}$", description="The existing VPC's id (or give vpcName).")
    vpc_name: str | None = Field(None, min_length=1, description="The existing VPC's Name tag (or give vpcId).")
    private_subnet_ids: dict[str, str] = Field(
        ..., min_length=1,
        description="The private subnet to use in each AZ, e.g. {us-east-1a: subnet-0abc...}. Each is read at deploy "
        "time and refused if it assigns public IPs, lies in another AZ or lacks free addresses for its fleets.",
    )

    @field_validator("private_subnet_ids")
    @classmethod
    def _subnet_ids(cls, v: dict[str, str]) -> dict[str, str]:
        bad = {az: s for az, s in v.items() if not re.fullmatch(r"subnet-[0-9a-f]{8,17}", s)}
        if bad:
            raise ValueError(f"not subnet ids (subnet-...): {bad}")
        return v

    @model_validator(mode="after")
    def _one_vpc(self) -> "ExistingNetwork":
        if (self.vpc_id is None) == (self.vpc_name is None):
            raise ValueError("give exactly one of vpcId and vpcName")
        return self


# CloudWatch Logs' retention values (PutRetentionPolicy), in days.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)
EKS_LOG_TYPES = ("api", "audit", "authenticator", "controllerManager", "scheduler")


class FlowLogsConfig(Model):
    destination: Literal["cloud-watch-logs", "s3", "none"] = Field(
        "cloud-watch-logs",
        description="Where the VPC's flow logs (all traffic) go: cloud-watch-logs (a log group of the stack's, written "
        "through a role that may write only to it), s3 (the bucket in bucketArn), or none.",
    )
    bucket_arn: str | None = Field(
        None, pattern=r"^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
        description="For destination s3: the bucket, optionally with a /prefix, e.g. arn:aws:s3:::my-flow-logs/vpc; "
        "its bucket policy must let delivery.logs.amazonaws.com write to it.",
    )
    retention_days: int = Field(365, description="For destination cloud-watch-logs: days the log group keeps flow logs.")

    @field_validator("retention_days")
    @classmethod
    def _retention(cls, v: int) -> int:
        if v not in LOG_RETENTION_DAYS:
            raise ValueError(f"CloudWatch Logs keeps logs for one of {', '.join(map(str, LOG_RETENTION_DAYS))} days")
        return v

    @model_validator(mode="after")
    def _bucket_with_s3(self) -> "FlowLogsConfig":
        if (self.destination == "s3") != (self.bucket_arn is not None):
            raise ValueError("bucketArn goes with destination s3, and only with it")
        return self


def _ipv4_network(v: str, example: str) -> str:
    try:
        return str(ipaddress.IPv4Network(v))
    except ValueError as exc:
        raise ValueError(f"not an IPv4 CIDR ({exc}); for example {example}") from None


def _address_block(v: str, example: str) -> str:
    net = ipaddress.IPv4Network(_ipv4_network(v, example))
    if not 16 <= net.prefixlen <= addressing.MAX_BLOCK_PREFIX:
        raise ValueError(f"/{net.prefixlen} is outside what the address plan takes: /16 to /{addressing.MAX_BLOCK_PREFIX} "
                         f"(AWS allows /16 to /28; the plan keeps an eighth per AZ and /28 public subnets at the least)")
    return str(net)


class SubnetCidrs(Model):
    private: str | None = Field(None, description="The AZ's private subnet, inside vpcCidr. Default: the AZ's slot (an eighth of the VPC by AZ letter).")
    public: str | None = Field(None, description="The AZ's public subnet (NAT), inside vpcCidr. Default: the AZ's /26 (or smaller) in the VPC's last eighth.")
    secondary: str | None = Field(None, description="The AZ's private subnet in secondaryCidr. Default: the AZ's eighth of that block.")

    @field_validator("private", "public", "secondary")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is None:
            return v
        net = ipaddress.IPv4Network(_ipv4_network(v, "10.40.0.0/18"))
        if not 16 <= net.prefixlen <= addressing.SMALLEST_SUBNET_PREFIX:
            raise ValueError(f"/{net.prefixlen} is outside what a subnet may be: /16 to /28")
        return str(net)


class NetworkConfig(Model):
    existing: ExistingNetwork | None = Field(
        None,
        description="Use an existing VPC and private subnets instead of creating them; only the EFA security group "
        "and the fleets' resources are created in it.",
    )
    vpc_cidr: str = Field(
        "10.0.0.0/16",
        description="IPv4 CIDR of the VPC, /16 to /22. Each AZ's private subnet is the eighth of it its AZ letter "
        "names (a: the first, ... g: the seventh); the last eighth holds the public subnets.",
    )
    secondary_cidr: str | None = Field(
        None,
        description="A secondary IPv4 CIDR block for the VPC (/16 to /22, e.g. 100.64.0.0/16), for fleets that outgrow "
        "their subnet (fleets[].subnet: secondary). Every AZ gets a private subnet in it, planned as in vpcCidr.",
    )
    subnet_cidrs: dict[str, SubnetCidrs] = Field(
        default_factory=dict,
        description="Explicit subnet CIDRs by AZ, e.g. {us-east-1a: {private: 10.40.0.0/18}}, instead of the AZ's slot: "
        "for a fleet larger than its slot, or to keep a subnet an earlier plan made. Changing one replaces that subnet.",
    )
    nat_availability_zone: str | None = Field(
        None,
        description="With natGateways single, the AZ of the one NAT gateway. Default: the stack's AZ of the lowest letter.",
    )
    nat_gateways: Literal["single", "per-az"] = Field(
        "single",
        description="NAT for egress: one gateway for the VPC (cheaper), or one per AZ (no cross-AZ dependency).",
    )
    interface_endpoints: list[Literal["ecr.api", "ecr.dkr", "sts", "ssm", "ssmmessages", "ec2messages", "logs"]] = Field(
        default_factory=list,
        description="Interface VPC endpoints to create, so image pulls and API calls skip the NAT. "
        "An S3 gateway endpoint is always created.",
    )
    availability_zones: list[str] = Field(
        default_factory=list,
        description="AZs that get subnets besides the fleets' and the cluster's own (eks.availabilityZones).",
    )
    flow_logs: FlowLogsConfig = Field(default_factory=FlowLogsConfig, description="The VPC's flow logs.")
    public_ip_on_launch: bool = Field(
        False,
        description="Public subnets give instances launched in them a public IPv4 address. Default false: only the NAT "
        "gateways live there, and they have Elastic IPs; true for a team that launches hosts such as bastions there.",
    )

    @model_validator(mode="after")
    def _existing_excludes_creation(self) -> "NetworkConfig":
        if self.existing is not None:
            clash = sorted(type(self).model_fields[k].alias or k for k in self.model_fields_set - {"existing"})
            if clash:
                raise ValueError(f"{', '.join(clash)} describe a VPC to create; with existing they are not used: remove them")
        return self

    @field_validator("vpc_cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        return _address_block(v, "10.0.0.0/16")

    @field_validator("secondary_cidr")
    @classmethod
    def _secondary(cls, v: str | None) -> str | None:
        return None if v is None else _address_block(v, "100.64.0.0/16")

    @model_validator(mode="after")
    def _secondary_allowed(self) -> "NetworkConfig":
        why = self.secondary_cidr and addressing.secondary_block_refusal(self.vpc_cidr, self.secondary_cidr)
        if why:
            raise ValueError(f"secondaryCidr {self.secondary_cidr}: {why}")
        return self


# --- fleets ------------------------------------------------------------------


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
        description="on-demand; reservation: target an On-Demand Capacity Reservation; capacity-block: an EC2 Capacity Block for ML.",
    )
    reservation_id: str | None = Field(
        None, pattern=r"^cr-[0-9a-f]{8,17}$", description="The capacity reservation or block id (cr-...), for reservation and capacity-block."
    )
    start: AwareDatetime | None = Field(
        None, description="capacity-block: when the block starts, with its zone, e.g. '2026-12-14T11:30:00Z' (quote it). "
        "Default: read from the reservation at deploy time.",
    )
    end: AwareDatetime | None = Field(None, description="capacity-block: when the block ends; give it with start.")
    instance_count: int | None = Field(
        None, ge=1, description="capacity-block: the instances the block holds; nodes.max may not exceed it. Default: not checked.",
    )


def in_region(az: str, region: str) -> bool:
    """An AZ name of the region: us-east-1a for us-east-1."""
    return re.fullmatch(re.escape(region) + r"[a-z]", az) is not None


def _known_type(name: str, value: str, info: ValidationInfo) -> str:
    """A type the catalog in the validation context knows (the shipped data plus the stack's declarations)."""
    cat = (info.context or {}).get("catalog")
    if cat is not None and name not in cat:
        try:
            cat.get(name)
        except UnknownInstanceType as exc:
            raise ValueError(f"{exc}; declare a type the data lacks under {NAMESPACE}:instanceTypes") from None
    return value


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
    subnet: Literal["primary", "secondary"] = Field(
        "primary",
        description="The private subnet of its AZ the fleet uses: primary (in network.vpcCidr) or secondary (in network.secondaryCidr).",
    )
    taints: list[TaintConfig] | None = Field(
        None,
        description="On EKS, the node group's taints. Default: the accelerator's taint "
        "(nvidia.com/gpu=true:NoSchedule or aws.amazon.com/neuron=true:NoSchedule); [] for none.",
    )

    @field_validator("instance_type")
    @classmethod
    def _known_type(cls, v: str, info: ValidationInfo) -> str:
        return _known_type(v, v, info)

    @field_validator("availability_zone")
    @classmethod
    def _in_region(cls, v: str, info: ValidationInfo) -> str:
        region = (info.context or {}).get("region")
        if isinstance(region, str) and not in_region(v, region):
            raise ValueError(f"not an AZ of region {region}; expected {region}a, {region}b, ...")
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


# --- EKS -----------------------------------------------------------------------


class ExistingCluster(Model):
    cluster_name: str = Field(..., min_length=1, description="Name of the existing EKS cluster the fleets' node groups join.")
    device_plugins: bool = Field(True, description="Install the EFA and NVIDIA device plugins; false when the cluster runs them already.")


class EksConfig(Model):
    enabled: bool = Field(False, description="Put the fleets on EKS: every fleet becomes a managed node group.")
    existing: ExistingCluster | None = Field(
        None, description="Join an existing cluster (read at deploy time) instead of creating one; needs enabled: true.",
    )
    availability_zones: list[str] = Field(
        default_factory=list,
        description="For a new cluster, two or more AZs whose private subnets the control plane and the system node group "
        "use. Named here, not derived from the fleets, so that adding a fleet in a new AZ never changes the cluster.",
    )
    version: str = Field("1.33", pattern=r"^1\.\d{2}$", description="Kubernetes version, e.g. 1.33.")
    vpc_cni_version: str = Field(
        "v1.19.2-eksbuild.1",
        pattern=r"^v\d+\.\d+\.\d+-eksbuild\.\d+$",
        description="VPC CNI add-on version; v1.18.4 or newer, the first to handle efa-only interfaces.",
    )
    public_access_cidrs: list[str] = Field(
        default_factory=list,
        description="CIDRs allowed to reach a public API endpoint. Empty (default): the endpoint is private only.",
    )
    log_types: list[Literal[EKS_LOG_TYPES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(EKS_LOG_TYPES),
        description="Control-plane log types EKS sends to CloudWatch Logs (its log group /aws/eks/<cluster>/cluster). "
        "Default: all five; [] for none.",
    )
    namespaces: list[str] = Field(
        default_factory=lambda: [JOB_NAMESPACE],
        description="Namespaces the stack creates in its cluster for jobs (jobs[].namespace), labelled with the Pod "
        "Security level EFA jobs need: privileged (IPC_LOCK is outside baseline). A cluster setting, kept whatever "
        "jobs are listed: removing one deletes it and everything in it.",
    )
    node_monitoring_agent: bool | None = Field(
        None,
        description="Install the EKS node monitoring agent add-on, which reports GPU, Neuron, network and kernel faults "
        "as node conditions that node auto repair acts on. Default: on when a fleet has accelerators.",
    )
    operators: list[Literal["training-operator", "mpi-operator"]] = Field(
        default_factory=list,
        description="Job operators to install in the cluster: training-operator (Kubeflow, for kind pytorchjob) and "
        "mpi-operator (v2beta1, for kind mpijob). A cluster setting, kept whatever jobs the stack lists: removing an "
        "operator deletes its CRDs and with them every job of that kind in the cluster.",
    )

    @field_validator("namespaces")
    @classmethod
    def _namespaces(cls, v: list[str]) -> list[str]:
        bad = [ns for ns in v if not re.fullmatch(NAMESPACE_PATTERN, ns) or ns == "default" or ns.startswith("kube-")]
        if bad:
            raise ValueError(f"{bad}: namespaces to create are DNS labels (a-z, 0-9, '-'), not default or kube-*")
        return v

    @field_validator("vpc_cni_version")
    @classmethod
    def _cni_handles_efa_only(cls, v: str) -> str:
        version = tuple(int(x) for x in v[1:].split("-")[0].split("."))
        if version < MIN_VPC_CNI:
            raise ValueError("efa-only interfaces need VPC CNI v1.18.4 or newer, e.g. v1.19.2-eksbuild.1")
        return v

    @field_validator("public_access_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for cidr in v:
            try:
                ipaddress.IPv4Network(cidr)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IPv4 CIDR such as 203.0.113.0/24") from None
        return v


# --- jobs ------------------------------------------------------------------------


class ClusterConfig(Model):
    """A cluster this stack does not manage at all, as a target for jobs."""

    name: str = Field(..., pattern=NAME_PATTERN, description="Name jobs use for it (jobs[].fleet).")
    kind: Literal["eks", "hyperpod"] = Field(..., description="eks: an EKS cluster; hyperpod: a SageMaker HyperPod cluster on EKS.")
    instance_type: str = Field(
        ..., description="Its EFA node type; HyperPod's ml.p5.48xlarge form is accepted and maps to the EC2 type for the catalog.",
    )
    nodes: int = Field(..., ge=1, description="EFA nodes available to jobs.")

    @property
    def ec2_type(self) -> str:
        return self.instance_type.removeprefix("ml.")

    @field_validator("instance_type")
    @classmethod
    def _known_type(cls, v: str, info: ValidationInfo) -> str:
        return _known_type(v.removeprefix("ml."), v, info)


class JobConfig(Model):
    name: str = Field(..., pattern=NAME_PATTERN, description="Job name: lower case, digits and '-'.")
    fleet: str = Field(..., description="Where the job runs: a fleet (efa-infra:fleets[].name) or an unmanaged cluster (efa-infra:clusters[].name).")
    launcher: Literal["torchrun", "accelerate", "nccl-tests"] = Field(..., description="How processes are launched.")
    command: list[str] = Field(
        default_factory=list,
        description="The training script and its arguments, e.g. [train.py, --epochs, '3'] (torchrun, accelerate), "
        "or the nccl-tests binary and its arguments (default: all_reduce_perf -b 8 -e 2G -f 2 -g 1).",
    )
    image: str | None = Field(
        None,
        description="Container image; required for jobs on Kubernetes. A dated or versioned tag "
        "(public.ecr.aws/example/train:2026.11) or a digest (...@sha256:<64 hex>); latest and untagged images are "
        "refused: the nodes of one job could run different images.",
    )
    seccomp_profile: Literal["RuntimeDefault", "Unconfined"] = Field(
        "RuntimeDefault",
        description="On Kubernetes, the pods' seccomp profile: the container runtime's default filter, or Unconfined "
        "for tools that make system calls it refuses (such as perf profiling).",
    )
    namespace: str = Field(
        JOB_NAMESPACE, pattern=NAMESPACE_PATTERN,
        description="On Kubernetes, the namespace of the job's objects. Its Pod Security level must be privileged "
        "(IPC_LOCK, which EFA needs, is outside baseline). On an EKS cluster the stack creates, it must be listed in "
        "eks.namespaces, which the stack creates so labelled; elsewhere it must exist.",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables; they override the derived EFA settings.")
    nodes: int | None = Field(None, ge=1, description="Nodes to run on (at most the fleet's max). Default: the fleet's desired count.")

    @field_validator("image")
    @classmethod
    def _pinned_image(cls, v: str | None) -> str | None:
        if v is None:
            return v
        ref = IMAGE_TAG.match(v)
        if ref is None:
            raise ValueError("not an image reference such as public.ecr.aws/example/train:2026.11 or repo@sha256:<64 hex>")
        if not ref["digest"] and ref["tag"] in (None, "latest"):
            raise ValueError(f"{'the tag latest' if ref['tag'] else 'an image without a tag (so latest)'} does not pin the "
                             f"image: the nodes of one job could pull different ones; give a dated or versioned tag ({ref['repo']}:2026.11) or a digest "
                             f"({ref['repo']}@sha256:...)")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
        if bad:
            raise ValueError(f"environment variable names take letters, digits and '_' and do not start with a digit: {bad}")
        return v
    procs_per_node: int | None = Field(None, ge=1, description="Processes per node. Default: the accelerators per node.")
    efa: bool = Field(True, description="Use EFA; false gives the TCP baseline for comparison.")
    efa_check: bool = Field(
        True,
        description="No silent TCP fallback: stop the launch when a node or pod lacks the EFA devices or accelerators "
        "its type has, and stop the job when NCCL's log shows it is not on the aws-ofi-nccl plugin with the efa "
        "provider and every EFA NIC. false: warn and go on.",
    )
    nccl_debug: Literal["INFO", "WARN"] = Field(
        "INFO",
        description="NCCL_DEBUG for an EFA job. INFO (default) comes with NCCL_DEBUG_SUBSYS=INIT,NET: the lines the "
        "transport check reads, printed at start-up only; WARN prints warnings only, which leaves the transport "
        "check nothing to read (so it needs efaCheck: false).",
    )
    working_directory: str | None = Field(
        None, pattern=r"^/",
        description="Absolute path the launch runs in on every node (typically a shared file system), so a relative "
        "command such as train.py is found there: the SSM document's workingDirectory on EC2, the container's "
        "workingDir on Kubernetes. Default: where SSM or the image starts.",
    )
    shm_size: str | None = Field(
        None, pattern=r"^[1-9][0-9]*(Mi|Gi)$",
        description="Size of /dev/shm in the job's pods (Kubernetes), e.g. 64Gi; at most what a pod may use on the node type. "
        "Default: 64Gi, or half of what a pod may use on smaller types.",
    )
    port: int = Field(29500, ge=1024, le=65535, description="Rendezvous (master) port.")
    kind: Literal["indexed-job", "pytorchjob", "mpijob"] = Field(
        "indexed-job",
        description="On EKS: indexed-job (a Kubernetes Indexed Job and headless Service, no operator), "
        "pytorchjob (Kubeflow training operator; torchrun and accelerate) or mpijob (MPI operator v2beta1; nccl-tests).",
    )
    apply: bool = Field(False, description="On EKS, have Pulumi apply the manifests; they are always exported as stack outputs.")

    @model_validator(mode="after")
    def _kind_fits_launcher(self) -> "JobConfig":
        if self.kind == "pytorchjob" and self.launcher == "nccl-tests":
            raise ValueError("kind pytorchjob runs torchrun or accelerate; use mpijob or indexed-job for nccl-tests")
        if self.kind == "mpijob" and self.launcher != "nccl-tests":
            raise ValueError(f"kind mpijob runs nccl-tests; use pytorchjob or indexed-job for {self.launcher}")
        if self.launcher != "nccl-tests" and not self.command:
            raise ValueError(f"launcher {self.launcher} needs a command: the training script and its arguments")
        return self


# --- the stack -------------------------------------------------------------------


class StackConfig(Model):
    """Everything one stack (environment) asks for."""

    region: str = Field(..., description="AWS region, from aws:region.")
    network: NetworkConfig = Field(default_factory=NetworkConfig, description="The VPC and its subnets.")
    fleets: list[FleetConfig] = Field(default_factory=list, description="GPU fleets, each in one AZ and placement group.")
    instance_types: dict[str, InstanceTypeSpec] = Field(default_factory=dict, description="Instance types the shipped AWS data lacks, by name.")
    eks: EksConfig = Field(default_factory=EksConfig, description="The optional EKS cluster.")
    clusters: list[ClusterConfig] = Field(default_factory=list, description="Clusters this stack does not manage, as job targets.")
    jobs: list[JobConfig] = Field(default_factory=list, description="Training jobs rendered for the fleets and clusters.")
    protect: bool | None = Field(
        None,
        description="Mark the VPC, its CIDR blocks, subnets and NAT gateways, the EKS cluster and its node groups protected "
        "(Pulumi protect: no update or destroy can delete them). Default: true for production stacks, whose name starts with prod.",
    )

    def catalog(self) -> Catalog:
        return catalog_for(self.instance_types)

    def fleet(self, name: str) -> FleetConfig:
        return next(f for f in self.fleets if f.name == name)


def catalog_for(specs: dict[str, InstanceTypeSpec]) -> Catalog:
    return Catalog({name: from_data(name, spec.model_dump(by_alias=True), custom=True) for name, spec in specs.items()})


# --- errors ----------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: str  # e.g. efa-infra:fleets[0].nodes.max
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem], source: str = "stack config"):
        self.problems = problems
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{len(self.problems)} problem{'s' * (len(self.problems) != 1)} in {self.source}:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def key_path(loc: tuple) -> str:
    """('fleets', 0, 'nodes', 'max') -> 'efa-infra:fleets[0].nodes.max'."""
    if not loc:
        return NAMESPACE
    head, rest = loc[0], loc[1:]
    out = "aws:region" if head == "region" else f"{NAMESPACE}:{head}"
    for part in rest:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model that holds the key at `loc`, to list its valid keys."""
    model: Any = StackConfig
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            if model is StackConfig:
                return None
            continue  # a dict key, such as an instance type name
        model = _inner_model(field.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found:
            return found
    return None


def _valid_keys(model: type[BaseModel]) -> str:
    return ", ".join(f.alias or n for n, f in model.model_fields.items())


def _from_pydantic(err: ValidationError) -> list[Problem]:
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        path = key_path(loc)
        if e["type"] == "extra_forbidden":
            model = _model_at(loc)
            valid = _valid_keys(model) if model else ", ".join(SECTIONS)
            near = difflib.get_close_matches(str(loc[-1]), valid.split(", "), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            problems.append(Problem(path, f"unknown key{hint} Valid keys here: {valid}"))
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            problems.append(Problem(path, "required key is missing"))
        elif isinstance(e["input"], (dict, list)):
            problems.append(Problem(path, msg))  # a whole section: the message names the values
        else:
            problems.append(Problem(path, f"{msg} (got {e['input']!r})"))
    return problems


# --- checks that need the catalog or several fields --------------------------------


def _fleet_checks(i: int, f: FleetConfig, cat: Catalog) -> list[Problem]:
    at = lambda key: key_path(("fleets", i, *key.split(".")))  # noqa: E731
    out: list[Problem] = []
    itype = cat.get(f.instance_type)  # known: checked with the fields
    if f.efa and not itype.efa_supported:
        family = f.instance_type.split(".")[0]
        alike = [t.name for t in cat.efa_types() if t.name.split(".")[0] == family][:4]
        hint = f"EFA sizes of {family}: {', '.join(alike)}" if alike else "python -m components types lists them"
        out.append(Problem(at("efa"), f"{f.instance_type} has no EFA device; set efa: false or pick an EFA type ({hint})"))
    elif f.efa:
        try:
            efa.interfaces(itype, f.efa_layout)
        except efa.EfaLayoutError as exc:
            out.append(Problem(at("efaLayout"), str(exc)))
    mode, cap = f.placement_mode, f.capacity.type
    if mode == "cluster" and "cluster" not in itype.placement_strategies:
        out.append(Problem(at("placement.mode"), f"{f.instance_type} does not support cluster placement groups; use none or existing"))
    if mode == "existing" and not f.placement.group_name:
        out.append(Problem(at("placement.groupName"), "required when placement.mode is existing"))
    if mode != "existing" and f.placement.group_name:
        out.append(Problem(at("placement.groupName"), f"only used with placement.mode existing (mode is {mode})"))
    if cap != "on-demand" and not f.capacity.reservation_id:
        out.append(Problem(at("capacity.reservationId"), f"required for capacity.type {cap} (cr-...)"))
    if cap == "on-demand" and f.capacity.reservation_id:
        out.append(Problem(at("capacity.reservationId"), "given, but capacity.type is on-demand; set type reservation or capacity-block"))
    out.extend(_window_checks(f, at))
    if cap != "on-demand" and mode == "cluster":
        out.append(Problem(
            at("placement.mode"),
            f"'cluster' creates a new placement group, which conflicts with capacity.type {cap}: the reservation "
            "decides placement and a new group can fail with InsufficientInstanceCapacity. Use none, or existing "
            "with the group the reservation was made in",
        ))
    return out


def _window_checks(f: FleetConfig, at) -> list[Problem]:
    """A Capacity Block's window and size, when the config states them."""
    c = f.capacity
    given = [k for k, v in (("start", c.start), ("end", c.end), ("instanceCount", c.instance_count)) if v is not None]
    if c.type != "capacity-block":
        return [Problem(at(f"capacity.{k}"), f"only used with capacity.type capacity-block (type is {c.type})") for k in given]
    out = []
    if (c.start is None) != (c.end is None):
        missing = "end" if c.end is None else "start"
        out.append(Problem(at(f"capacity.{missing}"), "give the block's start and end together, or neither (read at deploy time)"))
    elif c.start is not None:
        try:
            capacity_window.schedule(c.start, c.end, datetime.now(timezone.utc))
        except capacity_window.WindowOver as exc:
            out.append(Problem(at("capacity.end"), str(exc)))
    if c.instance_count is not None and f.nodes.maximum > c.instance_count:
        out.append(Problem(at("nodes.max"), f"{f.nodes.maximum} nodes, but the block holds {c.instance_count} instances"))
    return out
def stack_azs(cfg: StackConfig) -> set[str]:
    """Every AZ that gets subnets: the network's, a new cluster's, the NAT gateway's and the fleets'."""
    net, eks = cfg.network, cfg.eks
    cluster = set(eks.availability_zones) if eks.enabled and eks.existing is None else set()
    return (set(net.availability_zones) | cluster | {f.availability_zone for f in cfg.fleets}
            | ({net.nat_availability_zone} if net.nat_availability_zone else set()))


def address_plan(cfg: StackConfig, cat: Catalog) -> list[addressing.Subnet]:
    """The subnets of a VPC the stack creates, with what its fleets need; raises addressing.AddressingError."""
    net = cfg.network
    tenants = [addressing.Tenant(f.name, "secondary" if f.subnet == "secondary" else "private", f.availability_zone,
                                 fleet_addresses_per_node(f, cat, cfg.eks.enabled) * f.nodes.maximum) for f in cfg.fleets]
    explicit = {(kind, az): cidr for az, cidrs in net.subnet_cidrs.items() for kind in addressing.KINDS
                if (cidr := getattr(cidrs, kind)) is not None}
    return addressing.plan_subnets(net.vpc_cidr, net.secondary_cidr, stack_azs(cfg), explicit, tenants)


def _sizing_checks(cfg: StackConfig, fleets: list[tuple[int, FleetConfig]], cat: Catalog) -> list[Problem]:
    """Every subnet where the plan puts it, and fleets within their subnet's room at nodes.max."""
    try:
        address_plan(cfg, cat)
    except addressing.AddressingError as err:
        problems = []
        for p in err.problems:
            if not p.over:
                problems.append(Problem(key_path(("network", "subnetCidrs", p.az) + ((p.kind,) if p.explicit else ())), p.message))
                continue
            here = "secondary" if p.kind == "secondary" else "primary"
            for i, f in fleets:
                if (f.availability_zone, f.subnet) != (p.az, here):
                    continue
                per_node = fleet_addresses_per_node(f, cat, cfg.eks.enabled)
                problems.append(Problem(
                    key_path(("fleets", i, "nodes", "max")),
                    f"fleet {f.name!r} cannot fit: {f.nodes.maximum} nodes x {per_node} private addresses each = "
                    f"{f.nodes.maximum * per_node}; {p.message}. Lower nodes.max, or give it room: a larger "
                    f"network.subnetCidrs.{p.az}.{p.kind} (replaces that subnet), a secondary CIDR block "
                    f"(network.secondaryCidr with fleets[].subnet: secondary), or a bigger network.vpcCidr (replaces the VPC)",
                ))
        return problems
    return []


def fleet_addresses_per_node(f: FleetConfig, cat: Catalog, on_eks: bool) -> int:
    itype = cat.get(f.instance_type)
    interfaces = efa.node_interfaces(itype, f.efa_layout, f.efa)
    return addressing.node_addresses(itype, efa.summarize(itype, interfaces), on_eks)


def _subnet_key_checks(cfg: StackConfig, fleets: list[tuple[int, FleetConfig]]) -> list[Problem]:
    """The keys that place subnets: the cluster's AZs, explicit CIDRs, the NAT's AZ, a fleet's secondary subnet."""
    out: list[Problem] = []
    net, eks = cfg.network, cfg.eks
    existing = net.existing
    for k, az in enumerate(eks.availability_zones):
        if not in_region(az, cfg.region):
            out.append(Problem(key_path(("eks", "availabilityZones", k)), f"{az!r} is not an AZ of region {cfg.region}"))
        elif existing is not None and az not in existing.private_subnet_ids:
            out.append(Problem(key_path(("eks", "availabilityZones", k)),
                               f"no subnet for {az} in network.existing.privateSubnetIds (has {', '.join(sorted(existing.private_subnet_ids))})"))
    if eks.enabled and eks.existing is None and len(set(eks.availability_zones)) < 2:
        have = sorted({f.availability_zone for _, f in fleets} | set(net.availability_zones)
                      | set(existing.private_subnet_ids if existing else ()))
        out.append(Problem(key_path(("eks", "availabilityZones")),
                           f"a new EKS cluster needs two or more AZs for its control plane and system node group, named here "
                           f"so that they stay fixed as fleets come and go (got {eks.availability_zones}); the stack's AZs: "
                           f"{', '.join(have) or 'none'}"))
    used = stack_azs(cfg)
    for az in net.subnet_cidrs:
        if not in_region(az, cfg.region):
            out.append(Problem(key_path(("network", "subnetCidrs", az)), f"{az!r} is not an AZ of region {cfg.region}"))
        elif az not in used:
            out.append(Problem(key_path(("network", "subnetCidrs", az)),
                               f"the stack has no subnets in {az} (its AZs: {', '.join(sorted(used))}); add it to "
                               "network.availabilityZones or remove this entry"))
        elif net.subnet_cidrs[az].secondary and not net.secondary_cidr:
            out.append(Problem(key_path(("network", "subnetCidrs", az, "secondary")), "needs network.secondaryCidr"))
    nat_az = net.nat_availability_zone
    if nat_az is not None and not in_region(nat_az, cfg.region):
        out.append(Problem(key_path(("network", "natAvailabilityZone")), f"{nat_az!r} is not an AZ of region {cfg.region}"))
    if nat_az is not None and net.nat_gateways != "single":
        out.append(Problem(key_path(("network", "natAvailabilityZone")), "only used with natGateways single (every AZ has one with per-az)"))
    for i, f in fleets:
        if f.subnet == "secondary" and not net.secondary_cidr:
            out.append(Problem(key_path(("fleets", i, "subnet")),
                               "secondary needs network.secondaryCidr, a second CIDR block for the VPC (e.g. 100.64.0.0/16)"
                               + ("; an existing network has only the subnets listed in privateSubnetIds" if existing else "")))
    return out


def _stack_checks(cfg: StackConfig, fleets: list[tuple[int, FleetConfig]], jobs: list[tuple[int, JobConfig]],
                  raw_fleet_names: set[str]) -> list[Problem]:
    out: list[Problem] = []
    if cfg.region not in regions():
        near = difflib.get_close_matches(cfg.region, regions(), n=2)
        out.append(Problem("aws:region", f"{cfg.region!r} is not an AWS region" + (f"; did you mean {', '.join(near)}?" if near else "")))
    seen: dict[str, int] = {}
    for i, f in fleets:
        if f.name in seen:
            out.append(Problem(key_path(("fleets", i, "name")), f"{f.name!r} is already the name of fleets[{seen[f.name]}]"))
        seen.setdefault(f.name, i)
    for k, az in enumerate(cfg.network.availability_zones):
        if not in_region(az, cfg.region):
            out.append(Problem(key_path(("network", "availabilityZones", k)), f"{az!r} is not an AZ of region {cfg.region}"))
    existing = cfg.network.existing
    if existing is not None:
        for az in existing.private_subnet_ids:
            if not in_region(az, cfg.region):
                out.append(Problem(key_path(("network", "existing", "privateSubnetIds", az)), f"{az!r} is not an AZ of region {cfg.region}"))
        for i, f in fleets:
            if f.availability_zone not in existing.private_subnet_ids:
                out.append(Problem(key_path(("fleets", i, "availabilityZone")),
                                   f"no subnet for {f.availability_zone} in network.existing.privateSubnetIds "
                                   f"(has {', '.join(sorted(existing.private_subnet_ids))})"))
    if cfg.eks.existing is not None and not cfg.eks.enabled:
        out.append(Problem(key_path(("eks", "enabled")), "must be true to join eks.existing"))
    if cfg.eks.existing is not None and cfg.eks.node_monitoring_agent:
        out.append(Problem(key_path(("eks", "nodeMonitoringAgent")),
                           "a cluster this stack joins keeps its own add-ons: install the agent where the cluster is "
                           "managed, or remove the key"))
    out.extend(_subnet_key_checks(cfg, fleets))
    cat = cfg.catalog()
    if cfg.eks.enabled:
        out.extend(_eks_fleet_checks(fleets, cat))
    clusters = {c.name: c for c in cfg.clusters}
    for k, c in enumerate(cfg.clusters):
        if c.name in seen:
            out.append(Problem(key_path(("clusters", k, "name")), f"{c.name!r} is already the name of fleets[{seen[c.name]}]"))
        if c.ec2_type in cat and not cat.get(c.ec2_type).efa_supported:
            out.append(Problem(key_path(("clusters", k, "instanceType")), f"{c.instance_type} has no EFA device; name the cluster's EFA node type"))
    known = {f.name: f for _, f in fleets}
    for j, job in jobs:
        if job.fleet not in raw_fleet_names and job.fleet not in clusters:
            out.append(Problem(key_path(("jobs", j, "fleet")),
                               f"no fleet or cluster named {job.fleet!r}; fleets: {', '.join(sorted(raw_fleet_names)) or 'none'}"
                               + (f"; clusters: {', '.join(sorted(clusters))}" if clusters else "")))
        if (cfg.eks.enabled or job.fleet in clusters) and not job.image:
            out.append(Problem(key_path(("jobs", j, "image")), "required for a job on Kubernetes: the container image to run"))
        on_k8s = job.fleet in clusters or (cfg.eks.enabled and job.fleet in known)
        nodes = job.nodes or (clusters[job.fleet].nodes if job.fleet in clusters else known[job.fleet].nodes.desired if job.fleet in known else 1)
        if on_k8s and job.launcher == "nccl-tests" and job.kind == "indexed-job" and nodes > 1:
            out.append(Problem(key_path(("jobs", j, "kind")),
                               f"nccl-tests across {nodes} nodes needs mpirun to start ranks on the other pods, "
                               "which an indexed Job has no means for: use kind: mpijob"))
        if on_k8s and job.shm_size:
            # Unmanaged clusters' nodes are EFA types: count their hugepages as set aside.
            node_type, efa_node = (clusters[job.fleet].ec2_type, True) if job.fleet in clusters else (known[job.fleet].instance_type, known[job.fleet].efa)
            if node_type in cat:
                out.extend(_shm_checks(j, job.shm_size, cat.get(node_type), efa_node))
        managed = cfg.eks.enabled and cfg.eks.existing is None and job.fleet in known
        if managed and job.namespace != "default" and job.namespace not in cfg.eks.namespaces:
            out.append(Problem(key_path(("jobs", j, "namespace")),
                               f"{job.namespace!r} is not a namespace the stack creates: add it to "
                               f"{key_path(('eks', 'namespaces'))} (it lists {', '.join(cfg.eks.namespaces) or 'none'})"))
        operator = JOB_OPERATORS.get(job.kind)
        if operator and managed and operator not in cfg.eks.operators:
            out.append(Problem(key_path(("jobs", j, "kind")),
                               f"kind {job.kind} needs the {operator} in the cluster: add {operator} to "
                               f"{key_path(('eks', 'operators'))} (it lists {', '.join(cfg.eks.operators) or 'none'})"))
        if job.fleet in clusters and job.nodes and job.nodes > clusters[job.fleet].nodes:
            out.append(Problem(key_path(("jobs", j, "nodes")),
                               f"{job.nodes} nodes, but cluster {job.fleet!r} has {clusters[job.fleet].nodes}"))
        if job.efa and job.efa_check and job.nccl_debug == "WARN":
            out.append(Problem(key_path(("jobs", j, "ncclDebug")),
                               "WARN hides the NCCL lines (INFO, subsystems INIT and NET) the EFA transport check reads; "
                               "use INFO, or set the job's efaCheck: false"))
        for name in sorted(TRANSPORT_LOGGING & set(job.env) if job.efa and job.efa_check else ()):
            out.append(Problem(key_path(("jobs", j, "env", name)),
                               f"sets NCCL's logging ({name}={job.env[name]!r}), which the EFA transport check reads: "
                               "use the job's ncclDebug key, or set its efaCheck: false"))
        if job.fleet in known and job.efa and not known[job.fleet].efa:
            out.append(Problem(key_path(("jobs", j, "efa")),
                               f"fleet {job.fleet!r} has efa: false, so its nodes have no EFA device; "
                               "set the job's efa: false (TCP) or enable EFA on the fleet"))
        if job.fleet in known and job.nodes and job.nodes > known[job.fleet].nodes.maximum:
            out.append(Problem(key_path(("jobs", j, "nodes")),
                               f"{job.nodes} nodes, but fleet {job.fleet!r} has at most {known[job.fleet].nodes.maximum}"))
    return out


def _eks_fleet_checks(fleets: list[tuple[int, FleetConfig]], cat: Catalog) -> list[Problem]:
    """What EKS would refuse in a fleet's node group (eks_rules), named by the key that causes it."""
    out: list[Problem] = []
    for i, f in fleets:
        at = lambda *key: key_path(("fleets", i, *key))  # noqa: E731
        taints = f.taints or []
        if len(taints) > eks_rules.MAX_TAINTS:
            out.append(Problem(at("taints"), f"{len(taints)} taints; EKS takes at most {eks_rules.MAX_TAINTS} per node group"))
        for k, t in enumerate(taints):
            for field, rule, message in eks_rules.taint_problems(t.key, t.value):
                out.append(Problem(at("taints", k, field), f"{message}; EKS refuses it ({eks_rules.RULES[rule].source})"))
        itype = cat.get(f.instance_type)
        kind = itype.accelerator.kind if itype.accelerator else None
        if f.ami is None and eks_rules.ami_type(kind, itype.architecture) is None:
            out.append(Problem(at("instanceType"), f"EKS has no AL2023 AMI type for {kind or 'plain'} {itype.architecture} "
                                                   f"nodes ({f.instance_type}): pin an AMI with ami, or pick another type"))
    return out


def _shm_checks(j: int, shm_size: str, itype: InstanceType, efa_node: bool) -> list[Problem]:
    # A memory-backed /dev/shm counts against the pod's memory: larger than that, the pod is killed once it fills.
    size, unit = int(shm_size[:-2]), shm_size[-2:]
    room = pod_memory_gib(itype.memory_mib, efa_node)
    if size * (1024 if unit == "Gi" else 1) <= room * 1024:
        return []
    hugepages = f", less {HUGEPAGES_MIB // 1024} GiB of hugepages" if efa_node else ""
    return [Problem(key_path(("jobs", j, "shmSize")),
                    f"{shm_size!r} is more than the {room}Gi a pod may use on {itype.name} "
                    f"({itype.memory_mib // 1024} GiB{hugepages}, {POD_MEMORY_SHARE:.0%} of the rest); "
                    f"/dev/shm is memory and counts against it: at most {room}Gi")]


# --- loading ------------------------------------------------------------------------


def _valid_specs(specs: dict) -> dict[str, InstanceTypeSpec]:
    out = {}
    for name, value in specs.items():
        try:
            out[name] = InstanceTypeSpec.model_validate(value)
        except ValidationError:
            pass  # reported by the whole-document validation
    return out


def _salvage(raw: dict, context: dict) -> tuple[StackConfig | None, list[tuple[int, FleetConfig]], list[tuple[int, JobConfig]]]:
    """The parts of an invalid document that are valid alone, so their checks still run."""
    def one(model, value, default=None):
        try:
            return model.model_validate(value if value is not None else {}, context=context)
        except ValidationError:
            return default
    if not isinstance(raw.get("region"), str):
        return None, [], []
    cfg = StackConfig.model_construct(
        region=raw["region"],
        network=one(NetworkConfig, raw.get("network"), NetworkConfig()),
        eks=one(EksConfig, raw.get("eks"), EksConfig()),
        instance_types=_valid_specs(raw.get("instanceTypes") if isinstance(raw.get("instanceTypes"), dict) else {}),
        clusters=[c for v in (raw.get("clusters") if isinstance(raw.get("clusters"), list) else []) if (c := one(ClusterConfig, v))],
        fleets=[], jobs=[],
    )
    items = lambda key: raw.get(key) if isinstance(raw.get(key), list) else []  # noqa: E731
    fleets = [(i, m) for i, v in enumerate(items("fleets")) if (m := one(FleetConfig, v))]
    jobs = [(j, m) for j, v in enumerate(items("jobs")) if (m := one(JobConfig, v))]
    return cfg, fleets, jobs


def load(raw: dict, source: str = "stack config") -> StackConfig:
    """Validate a config document (`region` plus the namespace's sections) or raise ConfigError."""
    problems: list[Problem] = []
    specs = raw.get("instanceTypes") if isinstance(raw.get("instanceTypes"), dict) else {}
    context = {"catalog": catalog_for(_valid_specs(specs)), "region": raw.get("region")}
    try:
        cfg = StackConfig.model_validate(raw, context=context)
        fleets, jobs = list(enumerate(cfg.fleets)), list(enumerate(cfg.jobs))
    except ValidationError as err:
        problems.extend(_from_pydantic(err))
        cfg, fleets, jobs = _salvage(raw, context)
    if cfg is not None:
        cat = cfg.catalog()
        for i, f in fleets:
            problems.extend(_fleet_checks(i, f, cat))
        raw_fleets = raw.get("fleets") if isinstance(raw.get("fleets"), list) else []
        raw_names = {f.get("name") for f in raw_fleets if isinstance(f, dict)}
        problems.extend(_stack_checks(cfg, fleets, jobs, raw_names))
        if not problems and cfg.network.existing is None:  # existing subnets are checked at deploy time
            problems.extend(_sizing_checks(cfg, fleets, cat))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source)
    return cfg


def document_from_settings(settings: dict[str, Any]) -> dict:
    """`{"aws:region": ..., "efa-infra:fleets": [...]}` -> the document `load` takes.

    Values may be structured (a stack file) or JSON text (how the Pulumi engine
    hands config to the program). Other namespaces are left alone; unknown keys
    of ours are kept so that validation names them.
    """
    doc: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, str) and key.startswith(NAMESPACE + ":"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if key == "aws:region":
            doc["region"] = value
        elif key.startswith(NAMESPACE + ":"):
            doc[key.split(":", 1)[1]] = value
    return doc


def read_stack_file(path: str | Path) -> dict[str, Any]:
    """The `config:` map of a Pulumi stack file, keys as written (`ns:key`)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError([Problem(str(p), "no such stack file")], str(p)) from None
    return parse_stack_file(text, str(p))


def parse_stack_file(text: str, source: str) -> dict[str, Any]:
    """The `config:` map of a stack file's text (`source` names it in errors)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(source, f"not valid YAML: {exc}")], source) from None
    settings = data.get("config") if isinstance(data, dict) else None
    if not isinstance(settings, dict):
        raise ConfigError([Problem(source, "a stack file needs a top-level 'config:' mapping")], source)
    return settings


def load_file(path: str | Path) -> StackConfig:
    """Load and validate a stack file such as stacks/Pulumi.dev.yaml."""
    return load(document_from_settings(read_stack_file(path)), str(path))


def stack_file_schema() -> dict:
    """JSON Schema of a stack file (stacks/Pulumi.<env>.yaml), from the same models that validate it."""
    model = StackConfig.model_json_schema(by_alias=True)
    ours = {f"{NAMESPACE}:{key}": schema for key, schema in model["properties"].items() if key != "region"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "efa-infra stack file",
        "description": "Pulumi stack config for efa-infra. Generated from components/config.py by tools/gen_schema.py.",
        "type": "object",
        "properties": {
            "config": {
                "type": "object",
                "properties": {"aws:region": {"type": "string", "enum": list(regions()), "description": "AWS region."}, **ours},
                "required": ["aws:region"],
                # Other namespaces (aws:profile, ...) are Pulumi's business; ours must be known keys.
                "propertyNames": {"anyOf": [{"not": {"pattern": f"^{NAMESPACE}:"}}, {"enum": sorted(ours)}]},
            },
        },
        "required": ["config"],
        "$defs": model.get("$defs", {}),
    }
