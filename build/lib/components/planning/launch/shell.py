"""The shell both renderers share: the torchrun or accelerate line, mpirun's arguments for nccl-tests,
and the EFA preflight and transport check around a launch."""

from __future__ import annotations

import shlex

from .. import preflight
from .job_plan import JobPlan

# MPI is only the bootstrap for nccl-tests: keep it on TCP, off the EFA devices.
MPI_TRANSPORT = ("--bind-to", "none", "--mca", "pml", "^cm,ucx", "--mca", "btl", "tcp,self",
                 "--mca", "btl_tcp_if_exclude", "lo,docker0")


def launch_line(plan: JobPlan, rank: str, master: str, port: str) -> str:
    """The torchrun or accelerate command as shell text; rank, master and port are shell words.
    (nccl-tests starts through mpirun instead.)"""
    script = " ".join(shlex.quote(a) for a in plan.command)
    if plan.launcher == "torchrun":
        return (f"torchrun --nnodes {plan.nodes} --node_rank {rank} --master_addr {master} "
                f"--master_port {port} --nproc_per_node {plan.procs_per_node} {script}")
    # accelerate: --multi_gpu is its torchrun path; --cpu with several machines runs undistributed.
    # --same_network: master address and port as torchrun gets them (a fleet's nodes share one subnet).
    return (f"accelerate launch --multi_gpu --same_network --num_machines {plan.nodes} --machine_rank {rank} "
            f"--main_process_ip {master} --main_process_port {port} --num_processes {plan.processes} {script}")


def mpirun(plan: JobPlan, env_names: list[str]) -> list[str]:
    args = ["mpirun", "--allow-run-as-root", "--tag-output", "-np", str(plan.processes), *MPI_TRANSPORT]
    for name in env_names:
        args += ["-x", name]
    return args


def rdma_env_arg(plan: JobPlan, env_names: list[str]) -> list[str]:
    """mpirun's -x for FI_EFA_USE_DEVICE_RDMA when the preflight set it at run time (shell words)."""
    if plan.rdma and "FI_EFA_USE_DEVICE_RDMA" not in env_names:
        return ["${FI_EFA_USE_DEVICE_RDMA:+-x FI_EFA_USE_DEVICE_RDMA}"]
    return []


def checks(plan: JobPlan) -> tuple[str, str]:
    """The shell of the EFA preflight, and of the transport check's efa_infra_watch; empty without EFA."""
    if not plan.efa_devices:
        return "", ""
    return (preflight.preflight(efa_devices=plan.efa_devices, instance_type=plan.instance_type,
                                accelerator=plan.accelerator_kind, accelerators=plan.accelerator_count,
                                rdma=plan.rdma, strict=plan.efa_check),
            preflight.transport_check(efa_devices=plan.efa_devices, strict=plan.efa_check))


def run_line(plan: JobPlan, line: str) -> str:
    """Shell that runs a launch line: watched by the transport check with EFA, else exec'd."""
    return ("efa_infra_watch " if plan.efa_devices else "exec ") + line
