"""The eks section: a cluster to create, or an existing one the fleets' node groups join."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import Field, field_validator

from .. import eks_versions
from .base import JOB_NAMESPACE, NAMESPACE_PATTERN, Model

# The first VPC CNI release that handles efa-only interfaces (an interface without an IPv4 address): the handling is
# aws/amazon-vpc-cni-k8s PR #3047, first released in v1.18.5; on v1.18.4 reading such an interface's metadata fails
# node networking. Holds for every later release.
MIN_VPC_CNI = (1, 18, 5)

EKS_LOG_TYPES = ("api", "audit", "authenticator", "controllerManager", "scheduler")



class ExistingCluster(Model):
    cluster_name: str = Field(..., min_length=1, description="Name of the existing EKS cluster the fleets' node groups join.")
    device_plugins: bool = Field(True, description="Install the EFA and NVIDIA device plugins; false when the cluster runs them already.")


def _version(v: Any) -> Any:
    """A version as YAML gives it: unquoted, 1.30 is the number 1.3."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        raise ValueError(f"a number, not a version: quote it, e.g. \"{eks_versions.default_version()}\" "
                         "(unquoted, YAML reads 1.30 as 1.3)")
    return v


def _offered(v: str) -> str:
    problem = eks_versions.version_problem(v, datetime.now(timezone.utc).date())
    if problem:
        raise ValueError(problem)
    return v


class DeployerConfig(Model):
    """Where `pulumi up` runs, and how it reaches the cluster's API server to apply the Kubernetes resources."""

    runs_on: str = Field(
        ..., min_length=1,
        description="Where this stack's `pulumi up` runs: the CI runner label the workflow's deploy job runs on "
        "(.github/workflows/infra.yml reads it from the plan), e.g. a self-hosted runner in the VPC, or a hosted "
        "runner with fixed egress addresses. scripts/pipeline.sh prints it before deploying.",
    )
    security_group_ids: list[str] = Field(
        default_factory=list,
        description="Security groups the deployer carries: a runner inside an existing VPC (network.existing). The "
        "stack admits each on TCP 443 into the cluster security group, which holds the private API endpoint.",
    )
    cidrs: list[str] = Field(
        default_factory=list,
        description="IPv4 CIDRs the deployer's requests come from. For a VPC the stack creates, they reach the public "
        "endpoint and must lie within eks.publicAccessCidrs (nothing is inside that VPC before its first `pulumi up`). "
        "In an existing VPC (network.existing), for a runner inside it or routed into it (VPN, peering, transit "
        "gateway, resolving names through the VPC's DNS), the stack admits them on TCP 443 into the cluster security "
        "group, which holds the private endpoint.",
    )

    @field_validator("security_group_ids")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        bad = [g for g in v if not re.fullmatch(r"sg-[0-9a-f]{8,17}", g)]
        if bad:
            raise ValueError(f"{bad}: security group ids look like sg-0123456789abcdef0")
        return v

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return _ipv4_cidrs(v)


def _ipv4_cidrs(v: list[str]) -> list[str]:
    for cidr in v:
        try:
            ipaddress.IPv4Network(cidr)
        except ValueError:
            raise ValueError(f"{cidr!r} is not an IPv4 CIDR such as 203.0.113.0/24") from None
    return v


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
    version: str = Field(
        default_factory=eks_versions.default_version, pattern=r"^1\.\d{2}$",
        description="Kubernetes version of the control plane, quoted (e.g. \"1.36\"); one EKS offers (the calendar in "
        "components/data/eks_versions.json). Default: the newest in standard support when that calendar was read. "
        "EKS moves a control plane one minor version at a time; validate warns when the version is in extended "
        "support, which costs more.",
    )
    node_group_version: str | None = Field(
        None, pattern=r"^1\.\d{2}$",
        description="Kubernetes version of the managed node groups (fleets without a pinned AMI, and the system "
        "nodes), quoted. Set it to move them after the control plane: EKS creates node groups at the cluster's "
        "version and moves a control plane only when every node group matches it. Default: unset, node groups keep "
        "the version they were created with. A pinned AMI's release decides its fleet's version instead.",
    )
    deployer: DeployerConfig | None = Field(
        None,
        description="Where `pulumi up` runs and how it reaches the API server of a cluster the stack creates (the "
        "Kubernetes resources are applied from there). Required for a new cluster; for a joined cluster only runsOn, "
        "since admitting the runner to its endpoint is its owner's.",
    )
    vpc_cni_version: str = Field(
        "v1.19.2-eksbuild.1",
        pattern=r"^v\d+\.\d+\.\d+-eksbuild\.\d+$",
        description="VPC CNI add-on version; v1.18.5 or newer, the first to handle efa-only interfaces "
        "(aws/amazon-vpc-cni-k8s PR #3047).",
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

    @field_validator("version", "node_group_version", mode="before")
    @classmethod
    def _quoted(cls, v: Any) -> Any:
        return _version(v)

    @field_validator("version", "node_group_version")
    @classmethod
    def _eks_offers(cls, v: str | None) -> str | None:
        return v if v is None else _offered(v)

    @field_validator("vpc_cni_version")
    @classmethod
    def _cni_handles_efa_only(cls, v: str) -> str:
        version = tuple(int(x) for x in v[1:].split("-")[0].split("."))
        if version < MIN_VPC_CNI:
            raise ValueError("efa-only interfaces need VPC CNI v1.18.5 or newer (aws/amazon-vpc-cni-k8s PR #3047 first "
                             "shipped in v1.18.5), e.g. v1.19.2-eksbuild.1")
        return v

    @field_validator("public_access_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return _ipv4_cidrs(v)
