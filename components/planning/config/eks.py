"""The eks section: a cluster to create, or an existing one the fleets' node groups join."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator

from .base import JOB_NAMESPACE, NAMESPACE_PATTERN, Model

MIN_VPC_CNI = (1, 18, 4)  # first VPC CNI release that handles efa-only interfaces

EKS_LOG_TYPES = ("api", "audit", "authenticator", "controllerManager", "scheduler")



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
    devices: Literal["plugins", "dra"] = Field(
        "plugins",
        description="Who manages the nodes' EFA devices and accelerators: plugins (the EFA, NVIDIA and Neuron device "
        "plugins; pods request vpc.amazonaws.com/efa, nvidia.com/gpu, aws.amazon.com/neuron) or dra (Dynamic Resource "
        "Allocation: the DRANET chart aws-dranet for EFA, NVIDIA's DRA driver, Neuron's; pods request devices through "
        "ResourceClaimTemplates, and a job may take part of a GPU node with the EFA devices on its GPUs' PCIe roots). "
        "dra needs Kubernetes 1.35 with EFA (1.34 for the GPU and Neuron drivers alone), on a cluster the stack creates. "
        "A node never runs both for the same device.",
    )
    operators: list[Literal["trainer", "training-operator", "mpi-operator"]] = Field(
        default_factory=list,
        description="Job operators to install in the cluster: trainer (Kubeflow Trainer v2.3 with JobSet and efa-infra's "
        "ClusterTrainingRuntime efa-torch-distributed, for kind trainjob), training-operator (Kubeflow v1, for kind "
        "pytorchjob) and mpi-operator (v2beta1, for kind mpijob). A cluster setting, kept whatever jobs the stack lists: removing an "
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
