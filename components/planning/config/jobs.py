"""The jobs section, and the clusters this stack does not manage that jobs may target."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .base import JOB_NAMESPACE, NAME_PATTERN, NAMESPACE_PATTERN, Model, known_type

# An image reference's tag: after the last ':' that follows the last '/' (a registry's :port comes before a '/').
IMAGE_TAG = re.compile(r"^(?P<repo>[a-z0-9][a-z0-9._/:-]*?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


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
        return known_type(v.removeprefix("ml."), v, info)


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
    procs_per_node: int | None = Field(None, ge=1, description="Processes per node. Default: one per GPU, or per logical NeuronCore (32 on trn1.32xlarge, 64 on trn2.48xlarge).")
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
