"""A job's launch plan: everything a launch needs, derived from the stack config and the catalog (nodes,
processes, EFA devices, accelerators, what a pod holding a node may use, the EFA/NCCL environment)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import ofi_platform, processes
from ..bootstrap import HUGEPAGES_MIB, pod_cpus, pod_memory_gib
from ..config import JobConfig, StackConfig
from ..plan import EFA_LABEL, job_target

# NCCL and data loaders share tensors through /dev/shm; by default it takes at most
# half of what the pod may use, leaving the rest to the processes.
DEFAULT_SHM_GIB = 64
NCCL_TESTS_COMMAND = ("all_reduce_perf", "-b", "8", "-e", "2G", "-f", "2", "-g", "1")
# Pods: every interface but these; gloo takes no exclusion list, but in a pod the
# host name resolves to the pod IP, which is all gloo needs.
K8S_SOCKET_IFNAME = "^lo,docker0"


class LaunchError(ValueError):
    """A job that cannot be launched as configured."""


@dataclass(frozen=True)
class JobPlan:
    """One job's launch, per node unless said otherwise."""

    job: str
    fleet: str
    launcher: str  # torchrun, accelerate, nccl-tests
    kind: str  # on EKS: indexed-job, pytorchjob, mpijob
    target: str  # eks or ec2
    instance_type: str
    nodes: int
    procs_per_node: int
    efa_devices: int  # per node; 0 without EFA
    accelerator_resource: str | None  # nvidia.com/gpu, aws.amazon.com/neuron
    accelerator_kind: str | None  # gpu, neuron
    accelerator_count: int  # per node
    hugepages: str | None  # hugepages-2Mi per pod, with EFA
    memory: str  # what a pod holding the node may use (limit = request)
    cpu: str  # likewise its vCPUs
    shm_size: str  # /dev/shm in the pods
    env: dict[str, str]  # NCCL settings, then job.env; on EC2 the script adds the socket interface
    rdma: bool  # GPUDirect RDMA type: FI_EFA_USE_DEVICE_RDMA=1 at run time, with libfabric < 1.18 only
    efa_check: bool  # missing devices or a non-EFA transport stop the job (else: a warning)
    working_directory: str | None
    node_selector: dict[str, str]  # on Kubernetes: the labels of the target's nodes
    command: tuple[str, ...]
    port: int
    namespace: str
    seccomp_profile: str

    @property
    def processes(self) -> int:
        return self.nodes * self.procs_per_node


def job_plan(cfg: StackConfig, job: JobConfig) -> JobPlan:
    """Everything a launch of `job` needs, derived from the stack config and the catalog."""
    # config.load has checked the rest: the job's EFA needs an EFA fleet, env names are shell names.
    target = job_target(cfg, job.fleet)
    itype = target.itype
    devices = target.efa_devices if job.efa else 0
    accel = itype.accelerator
    rdma = job.efa and ofi_platform.uses_device_rdma(itype)
    room = pod_memory_gib(itype.memory_mib, target.efa_devices > 0)
    return JobPlan(
        job=job.name,
        fleet=target.name,
        launcher=job.launcher,
        kind=job.kind,
        target=target.platform,
        instance_type=itype.name,
        nodes=job.nodes or target.default_nodes,
        node_selector=target.node_selector if job.efa else {k: v for k, v in target.node_selector.items() if k != EFA_LABEL},
        procs_per_node=job.procs_per_node or processes.per_node(accel),
        efa_devices=devices,
        accelerator_resource=accel.resource_name if accel else None,
        accelerator_kind=accel.kind if accel else None,
        accelerator_count=accel.count if accel else 0,
        hugepages=f"{HUGEPAGES_MIB}Mi" if job.efa else None,
        memory=f"{room}Gi",
        cpu=str(pod_cpus(itype.vcpus)),
        shm_size=job.shm_size or f"{min(DEFAULT_SHM_GIB, room // 2)}Gi",
        env=_env(job, target.platform),
        rdma=rdma,
        efa_check=job.efa_check,
        working_directory=job.working_directory,
        command=tuple(job.command) or (NCCL_TESTS_COMMAND if job.launcher == "nccl-tests" else ()),
        port=job.port,
        namespace=job.namespace,
        seccomp_profile=job.seccomp_profile,
    )


def _env(job: JobConfig, target: str) -> dict[str, str]:
    # With EFA, the aws-ofi-nccl plugin sets the rest itself, per instance type: the
    # efa provider, fork safety, the platform's NCCL buffer sizes (ofi_platform).
    env: dict[str, str] = {} if job.efa else {"NCCL_NET": "Socket"}  # the TCP baseline, said outright
    env["NCCL_DEBUG"] = job.nccl_debug
    if job.nccl_debug == "INFO":
        # Start-up lines that name the transport (NET/OFI or NET/Socket), nothing per step.
        env["NCCL_DEBUG_SUBSYS"] = "INIT,NET"
    if target == "eks":
        env["NCCL_SOCKET_IFNAME"] = K8S_SOCKET_IFNAME
    env.update(job.env)
    return env
