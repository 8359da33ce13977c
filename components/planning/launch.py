"""How a job is launched: the derived plan, Kubernetes manifests, EC2 node scripts.

`job_plan()` derives everything a launch needs from the stack config and the
catalog (nodes, processes, EFA devices, accelerators, the EFA/NCCL
environment). The two renderers turn one plan into what a target runs:
`render_manifests()` for fleets in an EKS cluster (`manifests_yaml()` writes
them out), `render_node_script()` for plain EC2 fleets (`ssm_document()` wraps
it for SSM Run Command). Pure: no Pulumi import.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import yaml

from . import ofi_platform, preflight
from .bootstrap import HUGEPAGES_MIB, pod_cpus, pod_memory_gib
from .config import JobConfig, StackConfig
from .plan import EFA_LABEL, FLEET_TAG, STACK_TAG, job_target

EFA_RESOURCE = "vpc.amazonaws.com/efa"
# NCCL and data loaders share tensors through /dev/shm; by default it takes at most
# half of what the pod may use, leaving the rest to the processes.
DEFAULT_SHM_GIB = 64
JOB_LABEL = "efa-infra/job"
NCCL_TESTS_COMMAND = ("all_reduce_perf", "-b", "8", "-e", "2G", "-f", "2", "-g", "1")
# Where nccl-tests images keep the binaries, off PATH (aws-samples/awsome-distributed-training,
# micro-benchmarks/nccl-tests/nccl-tests.Dockerfile: git clone ... /opt/nccl-tests && make).
NCCL_TESTS_IMAGE_DIR = "/opt/nccl-tests/build"
# EFA does not cross AZs: a multi-node EFA job's pods share one. Within it they prefer
# nodes close in the network, by EKS's network topology labels, closest layer first
# (EKS user guide, ml-workload-topology: topology.k8s.aws/network-node-layer-1..3).
ZONE_LABEL = "topology.kubernetes.io/zone"
NETWORK_LAYERS = (("topology.k8s.aws/network-node-layer-3", 100), ("topology.k8s.aws/network-node-layer-2", 50),
                  ("topology.k8s.aws/network-node-layer-1", 25))
# Pods: every interface but these; gloo takes no exclusion list, but in a pod the
# host name resolves to the pod IP, which is all gloo needs.
K8S_SOCKET_IFNAME = "^lo,docker0"
# MPI is only the bootstrap for nccl-tests: keep it on TCP, off the EFA devices.
MPI_TRANSPORT = ("--bind-to", "none", "--mca", "pml", "^cm,ucx", "--mca", "btl", "tcp,self",
                 "--mca", "btl_tcp_if_exclude", "lo,docker0")
# What EFA needs of the container: to lock (register) memory with the device.
EFA_CAPABILITIES = ("IPC_LOCK",)
# What the MPI workers' sshd needs on top, all in the runtime's default set: port 22, privilege separation
# (chroot, setuid/setgid), the session's tty and key files (chown, fowner, dac_override), login records, and
# ending sessions (sshd(8), "Privilege separation"; containerd's default capabilities).
SSHD_CAPABILITIES = ("AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "NET_BIND_SERVICE", "SETGID", "SETUID",
                     "SYS_CHROOT")
SSHD_PORT = 22
# mpirun only starts and watches the ranks: a small, fixed share, so the launcher is never evicted first.
LAUNCHER_RESOURCES = {"cpu": "1", "memory": "2Gi"}


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
        procs_per_node=job.procs_per_node or (accel.count if accel else 1),
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


def _launch_line(plan: JobPlan, rank: str, master: str, port: str) -> str:
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


def _mpirun(plan: JobPlan, env_names: list[str]) -> list[str]:
    args = ["mpirun", "--allow-run-as-root", "--tag-output", "-np", str(plan.processes), *MPI_TRANSPORT]
    for name in env_names:
        args += ["-x", name]
    return args


def _rdma_env_arg(plan: JobPlan, env_names: list[str]) -> list[str]:
    """mpirun's -x for FI_EFA_USE_DEVICE_RDMA when the preflight set it at run time (shell words)."""
    if plan.rdma and "FI_EFA_USE_DEVICE_RDMA" not in env_names:
        return ["${FI_EFA_USE_DEVICE_RDMA:+-x FI_EFA_USE_DEVICE_RDMA}"]
    return []


def _checks(plan: JobPlan) -> tuple[str, str]:
    """The shell of the EFA preflight, and of the transport check's efa_infra_watch; empty without EFA."""
    if not plan.efa_devices:
        return "", ""
    return (preflight.preflight(efa_devices=plan.efa_devices, instance_type=plan.instance_type,
                                accelerator=plan.accelerator_kind, accelerators=plan.accelerator_count,
                                rdma=plan.rdma, strict=plan.efa_check),
            preflight.transport_check(efa_devices=plan.efa_devices, strict=plan.efa_check))


def _run(plan: JobPlan, line: str) -> str:
    """Shell that runs a launch line: watched by the transport check with EFA, else exec'd."""
    return ("efa_infra_watch " if plan.efa_devices else "exec ") + line


# --- Kubernetes ------------------------------------------------------------------


def render_manifests(cfg: StackConfig, job: JobConfig) -> list[dict]:
    """The job's Kubernetes manifests for a fleet in the stack's EKS cluster."""
    plan = job_plan(cfg, job)
    if plan.target != "eks":
        raise LaunchError(f"job {job.name!r}: the stack has no EKS cluster; use render_node_script for EC2 fleets")
    if plan.kind == "pytorchjob":
        return [_pytorchjob(plan, job)]
    if plan.kind == "mpijob":
        return [_mpijob(plan, job)]
    return _indexed_job(plan, job)


def manifests_yaml(docs: list[dict]) -> str:
    """The manifests as one multi-document YAML file, for kubectl apply -f."""
    return yaml.safe_dump_all(docs, sort_keys=False)


def _labels(plan: JobPlan, component: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": plan.job, JOB_LABEL: plan.job}
    if component:
        labels["app.kubernetes.io/component"] = component
    return labels


def _meta(plan: JobPlan) -> dict:
    """Metadata of the job's own objects."""
    return {"name": plan.job, "namespace": plan.namespace, "labels": _labels(plan)}


def _image(image: str) -> dict:
    """The image and its pull policy: a tag is checked against the registry at each start, so that every node of
    the job runs what the tag names now; a digest never changes."""
    return {"image": image, "imagePullPolicy": "IfNotPresent" if "@sha256:" in image else "Always"}


def _hardened(plan: JobPlan, spec: dict, container: dict, capabilities: tuple[str, ...] = ()) -> None:
    """Least privilege for a pod and its container: no service-account token (nothing here calls the API), the
    runtime's seccomp filter, no privilege escalation, no capability beyond `capabilities`."""
    spec["automountServiceAccountToken"] = False
    spec["securityContext"] = {"seccompProfile": {"type": plan.seccomp_profile}}
    caps: dict = {"drop": ["ALL"]}
    if capabilities:
        caps["add"] = list(capabilities)
    container["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": caps}


def _placement(plan: JobPlan) -> dict:
    """Pod spec fields that put a pod on the fleet's nodes."""
    spec: dict = {"nodeSelector": dict(plan.node_selector)}
    if plan.accelerator_resource:
        spec["tolerations"] = [{"key": plan.accelerator_resource, "operator": "Exists", "effect": "NoSchedule"}]
    return spec


def _env_list(plan: JobPlan) -> list[dict]:
    return [{"name": k, "value": v} for k, v in plan.env.items()]


# The pod and node the checks name, from the Downward API.
_WHERE = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
          {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]


def _pod_script(plan: JobPlan, body: str, *, check_node: bool = True) -> list[str]:
    """A container command: the EFA preflight (where the container holds the node's devices), then `body`."""
    pre, watch = _checks(plan)
    parts = ["set -u", f"JOB={shlex.quote(plan.job)}",
             'EFA_WHERE="pod ${POD_NAME:-$(hostname)} on node ${NODE_NAME:-unknown}"']
    if check_node:
        parts.append(pre.strip("\n"))
    if "efa_infra_watch" in body:
        parts.append(watch.strip("\n"))
    parts.append(body)
    return ["/bin/sh", "-c", "\n".join(p for p in parts if p) + "\n"]


def _nccl_tests_pod(plan: JobPlan, env_names: list[str]) -> str:
    """Shell that starts nccl-tests with mpirun from a pod; the binary by absolute path, so every rank finds it."""
    name = plan.command[0]
    resolve = f'''NCCL_TEST={shlex.quote(name)}
case $NCCL_TEST in
  */*) ;;
  *) if found=$(command -v "$NCCL_TEST"); then NCCL_TEST=$found
     elif [ -x {NCCL_TESTS_IMAGE_DIR}/"$NCCL_TEST" ]; then NCCL_TEST={NCCL_TESTS_IMAGE_DIR}/$NCCL_TEST
     else
       printf 'efa-infra[%s]: error: %s is neither on PATH (%s) nor in {NCCL_TESTS_IMAGE_DIR}: give the job'\\''s command its path\\n' "$JOB" "$NCCL_TEST" "$PATH" >&2
       exit 1
     fi ;;
esac'''
    mpirun = " ".join([*map(shlex.quote, _mpirun(plan, env_names)), *_rdma_env_arg(plan, env_names), '"$NCCL_TEST"',
                       *map(shlex.quote, plan.command[1:])])
    return resolve + "\n" + _run(plan, mpirun)


def _node_pod(plan: JobPlan, job: JobConfig, name: str, command: list[str], with_env: bool = True,
              capabilities: tuple[str, ...] = EFA_CAPABILITIES) -> dict:
    """The template of a pod that holds one whole node: its devices, CPUs and memory (requests = limits, so
    Guaranteed QoS), /dev/shm and locked memory."""
    resources: dict = {"cpu": plan.cpu, "memory": plan.memory}
    if plan.efa_devices:
        resources[EFA_RESOURCE] = plan.efa_devices
    if plan.accelerator_resource:
        resources[plan.accelerator_resource] = plan.accelerator_count
    if plan.hugepages:
        resources["hugepages-2Mi"] = plan.hugepages
    container: dict = {"name": name, **_image(job.image), "command": command}
    env = (_env_list(plan) if with_env else []) + (_WHERE if plan.efa_devices else [])
    if env:
        container["env"] = env
    if plan.working_directory:
        container["workingDir"] = plan.working_directory
    container["resources"] = {"requests": dict(resources), "limits": dict(resources)}
    container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    spec = _placement(plan)
    # EFA registers (locks) memory: ulimit -l unlimited comes from the runtime, the capability from here.
    _hardened(plan, spec, container, capabilities if plan.efa_devices else tuple(c for c in capabilities if c not in EFA_CAPABILITIES))
    # The device requests keep one pod per node, except on a type without devices.
    spec["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": _labels(plan, "node")},
        "topologyKey": "kubernetes.io/hostname",
    }]}}
    if plan.efa_devices and plan.nodes > 1:
        same = {"matchLabels": _labels(plan, "node")}
        spec["affinity"]["podAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": same, "topologyKey": ZONE_LABEL}],
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": weight, "podAffinityTerm": {"labelSelector": same, "topologyKey": key}}
                for key, weight in NETWORK_LAYERS
            ],
        }
    spec["containers"] = [container]
    spec["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": plan.shm_size}}]
    return {"metadata": {"labels": _labels(plan, "node")}, "spec": spec}


def _indexed_job(plan: JobPlan, job: JobConfig) -> list[dict]:
    service = plan.job  # pods are <job>-<index>.<service>
    if plan.launcher == "nccl-tests":  # on one node: config.load refuses more for an indexed Job
        command = _pod_script(plan, _nccl_tests_pod(plan, []))
    else:
        master = shlex.quote(f"{plan.job}-0.{service}")
        command = _pod_script(plan, _run(plan, _launch_line(plan, '"$JOB_COMPLETION_INDEX"', master, str(plan.port))))
    template = _node_pod(plan, job, "node", command)
    template["spec"]["subdomain"] = service
    template["spec"]["restartPolicy"] = "Never"
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(plan),
            "spec": {
                "clusterIP": "None",
                "selector": {JOB_LABEL: plan.job},
                # Pod 0's name must resolve before any readiness: it is the rendezvous.
                "publishNotReadyAddresses": True,
                "ports": [{"name": "rendezvous", "port": plan.port, "targetPort": plan.port}],
            },
        },
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": _meta(plan),
            "spec": {
                "completionMode": "Indexed",
                "completions": plan.nodes,
                "parallelism": plan.nodes,
                "backoffLimit": 0,  # a restarted rank cannot rejoin a formed rendezvous: fail the job
                "template": template,
            },
        },
    ]


def _pytorchjob(plan: JobPlan, job: JobConfig) -> dict:
    # The training operator sets MASTER_ADDR, MASTER_PORT (from the port named
    # pytorchjob-port of the container named pytorch) and RANK, the node rank.
    command = _pod_script(plan, _run(plan, _launch_line(plan, '"$RANK"', '"$MASTER_ADDR"', '"$MASTER_PORT"')))
    template = _node_pod(plan, job, "pytorch", command)
    template["spec"]["containers"][0]["ports"] = [{"name": "pytorchjob-port", "containerPort": plan.port}]
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if plan.nodes > 1:
        replicas["Worker"] = {"replicas": plan.nodes - 1, "restartPolicy": "Never", "template": template}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _meta(plan),
        "spec": {"runPolicy": {"backoffLimit": 0, "cleanPodPolicy": "Running"}, "pytorchReplicaSpecs": replicas},
    }


def _mpijob(plan: JobPlan, job: JobConfig) -> dict:
    # Ranks start through sshd on the workers and so see none of their pod's
    # env: the launcher passes every variable with -x. The workers hold the
    # devices and check them before sshd starts; the launcher, which sees every
    # rank's output, checks the transport. It decides FI_EFA_USE_DEVICE_RDMA from
    # its own libfabric, the workers' (same image).
    rdma = preflight.FIND_FI_INFO.strip("\n") + preflight.DEVICE_RDMA if plan.rdma else ""
    command = _pod_script(plan, rdma + _nccl_tests_pod(plan, ["PATH", "LD_LIBRARY_PATH", *plan.env]), check_node=False)
    launcher = {"name": "launcher", **_image(job.image), "command": command,
                "env": _env_list(plan) + (_WHERE if plan.efa_devices else []),
                "resources": {"requests": dict(LAUNCHER_RESOURCES), "limits": dict(LAUNCHER_RESOURCES)}}
    if plan.working_directory:
        launcher["workingDir"] = plan.working_directory
    launcher_pod = {"metadata": {"labels": _labels(plan, "launcher")}, "spec": {**_placement(plan), "containers": [launcher]}}
    _hardened(plan, launcher_pod["spec"], launcher)
    worker_pod = _node_pod(plan, job, "worker", _pod_script(plan, "exec /usr/sbin/sshd -De"), with_env=False,
                           capabilities=EFA_CAPABILITIES + SSHD_CAPABILITIES)
    # Ready once sshd listens: the launcher, created when the workers are ready, then does not race it.
    worker_pod["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": SSHD_PORT}, "periodSeconds": 5}
    return {
        "apiVersion": "kubeflow.org/v2beta1",
        "kind": "MPIJob",
        "metadata": _meta(plan),
        "spec": {
            "slotsPerWorker": plan.procs_per_node,
            "mpiImplementation": "OpenMPI",
            # Start mpirun once the workers run, so it does not race their sshd.
            "launcherCreationPolicy": "WaitForWorkersReady",
            "runPolicy": {"backoffLimit": 3, "cleanPodPolicy": "Running"},
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "restartPolicy": "OnFailure", "template": launcher_pod},
                "Worker": {"replicas": plan.nodes, "restartPolicy": "Never", "template": worker_pod},
            },
        },
    }


# --- EC2 ------------------------------------------------------------------------

_DISCOVER = r'''
log() { printf 'efa-infra[%s]: %s\n' "$JOB" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# SSM runs this without a login shell, so without what the EFA installer, CUDA and
# Open MPI put in /etc/profile.d (PATH, and LD_LIBRARY_PATH, which holds the
# aws-ofi-nccl plugin: without it NCCL quietly uses sockets). Take the login
# environment, the caller's PATH still first.
if [[ -r /etc/profile ]]; then
  caller_path=$PATH
  set +u
  . /etc/profile >/dev/null 2>&1 || true
  set -u
  PATH=$caller_path:$PATH
fi

# The fleet's nodes: a hostfile ($1, else $HOSTFILE; one IP per line, '#'
# comments), else the fleet's running instances, by tag, from the EC2 API.
HOSTS_FROM=${1:-${HOSTFILE:-}}
if [[ -n $HOSTS_FROM ]]; then
  [[ -r $HOSTS_FROM ]] || die "hostfile $HOSTS_FROM is not readable"
  raw_ips=$(sed -e 's/#.*//' -- "$HOSTS_FROM")
else
  HOSTS_FROM="EC2 instances tagged $FLEET_TAG=$FLEET, $STACK_TAG=$EFA_INFRA_STACK in $REGION"
  command -v aws >/dev/null || die "no hostfile (\$1 or \$HOSTFILE) and no aws CLI to list $HOSTS_FROM"
  raw_ips=$(aws ec2 describe-instances --region "$REGION" \
    --filters "Name=tag:$FLEET_TAG,Values=$FLEET" "Name=tag:$STACK_TAG,Values=$EFA_INFRA_STACK" \
              Name=instance-state-name,Values=running \
    --query 'Reservations[].Instances[].PrivateIpAddress' --output text) || die "could not list $HOSTS_FROM"
fi
# Sorted numerically so that every node derives the same ranks.
mapfile -t ALL_IPS < <(tr -s '[:space:]' '\n' <<<"$raw_ips" | sed '/^$/d' | sort -t . -k1,1n -k2,2n -k3,3n -k4,4n -u)
for ip in "${ALL_IPS[@]}"; do
  [[ $ip =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]] || die "'$ip' from $HOSTS_FROM is not an IPv4 address"
done
(( ${#ALL_IPS[@]} >= NODES_NUM )) ||
  die "the job runs on $NODES_NUM nodes but $HOSTS_FROM lists ${#ALL_IPS[@]}: ${ALL_IPS[*]:-none}"

# This node: its first IPv4 address that is in the list; the rank is the index there.
NODE_IP=
while read -r _ ifname _ cidr _; do
  for i in "${!ALL_IPS[@]}"; do
    if [[ ${ALL_IPS[i]} == "${cidr%/*}" ]]; then
      NODE_IP=${ALL_IPS[i]} NODE_IF=${ifname%@*} NODE_RANK=$i
      break 2
    fi
  done
done < <(ip -o -4 addr show)
[[ -n $NODE_IP ]] ||
  die "none of this node's addresses ($(ip -o -4 addr show | awk '{printf "%s ", $4}')) is in the node list from $HOSTS_FROM: ${ALL_IPS[*]}"
if (( NODE_RANK >= NODES_NUM )); then
  log "node $NODE_IP is number $((NODE_RANK + 1)) of ${#ALL_IPS[@]}; the job runs on the first $NODES_NUM: nothing to do here"
  exit 0
fi
NODES_IPS=$(printf '%s\n' "${ALL_IPS[@]:0:NODES_NUM}")
MASTER_ADDR=${ALL_IPS[0]}
export NODES_IPS NODES_NUM NODE_RANK MASTER_ADDR MASTER_PORT GPUS_PER_NODE
log "node $NODE_RANK of $NODES_NUM: $NODE_IP on $NODE_IF; master $MASTER_ADDR:$MASTER_PORT; $GPUS_PER_NODE processes per node"
'''

_NCCL_TESTS_HOSTS = r'''
if (( NODE_RANK != 0 )); then
  log "nccl-tests: node 0 ($MASTER_ADDR) starts every rank with mpirun; nothing more to do here"
  exit 0
fi
hosts=("${ALL_IPS[@]:0:NODES_NUM}")
MPI_HOSTS=$(IFS=,; echo "${hosts[*]/%/:$GPUS_PER_NODE}")
MPI_ENV=(-x PATH)
if [[ -n ${LD_LIBRARY_PATH:-} ]]; then MPI_ENV+=(-x LD_LIBRARY_PATH); fi
# By its absolute path, mpirun also finds its daemons on the other nodes (as --prefix would);
# SSM's shell lacks the login PATH that holds the EFA installer's Open MPI.
MPIRUN=$(command -v mpirun || true)
if [[ -z $MPIRUN && -x /opt/amazon/openmpi/bin/mpirun ]]; then MPIRUN=/opt/amazon/openmpi/bin/mpirun; fi
[[ -n $MPIRUN ]] || die "nccl-tests needs mpirun (Open MPI, from the EFA installer) on node 0"
# The DLAMI keeps its prebuilt nccl-tests beside each CUDA (/usr/local/cuda-X.Y/efa/test-cuda-X.Y/),
# off every PATH: take the default CUDA's, else any.
if [[ $NCCL_TEST != */* ]] && ! command -v "$NCCL_TEST" >/dev/null; then
  shopt -s nullglob
  found=(/usr/local/cuda/efa/test-cuda*/"$NCCL_TEST" /usr/local/cuda-*/efa/test-cuda-*/"$NCCL_TEST")
  (( ${#found[@]} )) ||
    die "$NCCL_TEST is neither on PATH nor among the DLAMI's nccl-tests (/usr/local/cuda-*/efa/test-cuda-*/): give the job's command its path"
  NCCL_TEST=${found[0]}
fi
'''

# mpirun starts the other nodes' ranks over SSH. Node 0 makes a key for this launch only
# and pushes it to each peer through EC2 Instance Connect, where it is accepted for 60 s
# (enough to log in): no key is stored on the nodes or in AWS.
_NCCL_TESTS_SSH = r'''
peers=("${hosts[@]:1}")
if (( ${#peers[@]} )) && [[ -n ${OMPI_MCA_plm_rsh_agent:-}${PRTE_MCA_plm_ssh_agent:-} ]]; then
  log "nccl-tests: the job's env sets mpirun's SSH agent; no key is pushed"
elif (( ${#peers[@]} )); then
  command -v aws >/dev/null || die "mpirun reaches the other nodes over SSH, and node 0 needs the aws CLI to give them a key"
  # The AMI's default user (ec2-user, ubuntu): Instance Connect keys are for a login user.
  SSH_USER=$(getent passwd 1000 | cut -d: -f1 || true)
  [[ -n $SSH_USER ]] || die "no login user (uid 1000) on this node to reach the other nodes as"
  key_dir=$(mktemp -d)
  trap 'rm -rf "$key_dir"' EXIT
  ssh-keygen -q -t ed25519 -N '' -C "efa-infra $JOB $NODE_IP" -f "$key_dir/key"
  # The fleet's instances by tag (addresses repeat across VPCs; a filter on many addresses hits EC2's limit).
  ids=$(aws ec2 describe-instances --region "$REGION" \
    --filters "Name=tag:$FLEET_TAG,Values=$FLEET" "Name=tag:$STACK_TAG,Values=$EFA_INFRA_STACK" \
              Name=instance-state-name,Values=running \
    --query 'Reservations[].Instances[].[PrivateIpAddress,InstanceId]' --output text) ||
    die "could not list the instances of fleet $FLEET"
  declare -A ID_OF=()
  while read -r ip id; do
    if [[ -n $ip ]]; then ID_OF[$ip]=$id; fi
  done <<<"$ids"
  for ip in "${peers[@]}"; do
    [[ -n ${ID_OF[$ip]:-} ]] || die "no running instance of fleet $FLEET in $REGION has the address $ip (from $HOSTS_FROM)"
  done
  # In parallel, since each key is accepted for 60 s from its push; every failure is named.
  export REGION SSH_USER JOB KEY_PUB="$key_dir/key.pub"
  for ip in "${peers[@]}"; do printf '%s %s\n' "${ID_OF[$ip]}" "$ip"; done |
    xargs -P 32 -L 1 bash -c 'aws ec2-instance-connect send-ssh-public-key --region "$REGION" --instance-id "$1" \
      --instance-os-user "$SSH_USER" --ssh-public-key "file://$KEY_PUB" >/dev/null ||
      { echo "efa-infra[$JOB]: error: EC2 Instance Connect took no key for $2 ($1)" >&2; exit 1; }' push ||
    die "could not give every node a key: node 0's role needs ec2-instance-connect:SendSSHPublicKey on the fleet"
  # Node 0 starts every daemon itself (no tree spawn): the other nodes do not have the key.
  # Open MPI 4 reads OMPI_MCA_plm_rsh_*, Open MPI 5 (PRRTE) PRTE_MCA_plm_ssh_*.
  ssh_agent="ssh -i $key_dir/key -l $SSH_USER -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
  export OMPI_MCA_plm_rsh_agent="$ssh_agent" OMPI_MCA_plm_rsh_no_tree_spawn=1
  export PRTE_MCA_plm_ssh_agent="$ssh_agent" PRTE_MCA_plm_ssh_no_tree_spawn=1
fi
'''

# A pushed key that sshd refused shows as "Permission denied (publickey)" in mpirun's output.
_MPIRUN_FAILED = r'''
  rc=$?
  if [[ -n ${key_dir:-} ]]; then  # keys were pushed
    log "mpirun failed (exit $rc); if it says 'Permission denied (publickey)', the AMI lacks the ec2-instance-connect package"
  fi
  exit $rc
'''


def render_node_script(cfg: StackConfig, job: JobConfig, *, stack: str) -> str:
    """A bash script that launches `job` when run on every node of its EC2 fleet.

    `stack` is the Pulumi stack name, which tags the fleet's instances next to the fleet name.
    """
    plan = job_plan(cfg, job)
    if plan.target != "ec2":
        raise LaunchError(f"job {job.name!r}: the stack's fleets are in EKS; use render_manifests")
    if not stack:
        raise LaunchError("render_node_script needs the stack name: it finds the fleet's instances by tag")
    q = shlex.quote
    header = [
        "#!/usr/bin/env bash",
        f"# efa-infra: job {plan.job} ({plan.launcher}) on fleet {plan.fleet}, {plan.nodes} x {plan.instance_type}.",
        "# Run it on every node of the fleet: bash launch.sh [HOSTFILE]",
        "set -euo pipefail",
        "",
        f"JOB={q(plan.job)}",
        f"FLEET={q(plan.fleet)}",
        f"FLEET_TAG={q(FLEET_TAG)} STACK_TAG={q(STACK_TAG)}",
        f"INSTANCE_TYPE={q(plan.instance_type)}",
        f"REGION={q(cfg.region)}",
        f"export EFA_INFRA_STACK={q(stack)}",
        f"NODES_NUM={plan.nodes}",
        f"GPUS_PER_NODE={plan.procs_per_node}",
        f"MASTER_PORT={plan.port}",
    ]
    if plan.working_directory:
        header.append(f"WORKING_DIRECTORY={q(plan.working_directory)}")
    sections = ["\n".join(header), _DISCOVER]
    if plan.working_directory:
        # Also set as the SSM document's workingDirectory; a hostfile run starts anywhere.
        sections.append('cd "$WORKING_DIRECTORY" || die "cannot enter the job\'s workingDirectory $WORKING_DIRECTORY on $NODE_IP"')
    pre, watch = _checks(plan)
    if pre:
        sections.append('EFA_WHERE="node $NODE_IP"\n' + pre)
    # Socket traffic (rendezvous, gloo, NCCL's bootstrap) goes over the interface of
    # the node's listed address; job.env, exported after, may still override it.
    sections.append("\n".join(['export NCCL_SOCKET_IFNAME="$NODE_IF" GLOO_SOCKET_IFNAME="$NODE_IF"',
                               *(f"export {k}={q(v)}" for k, v in plan.env.items())]))
    if plan.launcher == "nccl-tests":
        mpirun = _mpirun(plan, list(dict.fromkeys(["NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", *plan.env])))
        # No exec: the launch's key is removed when mpirun ends.
        sections += [f"NCCL_TEST={q(plan.command[0])}" + _NCCL_TESTS_HOSTS, _NCCL_TESTS_SSH, watch,
                     ("efa_infra_watch " if watch else "")
                     + " ".join(['"$MPIRUN"', *map(q, mpirun[1:]), *_rdma_env_arg(plan, list(plan.env)),
                                 '-H "$MPI_HOSTS" "${MPI_ENV[@]}"', '"$NCCL_TEST"', *map(q, plan.command[1:]), "|| {"])
                     + _MPIRUN_FAILED + "}"]
    else:
        sections += [watch, "\n".join([
            f"command -v {plan.launcher} >/dev/null ||",
            f'  die "{plan.launcher} is not on PATH ($PATH): install it in the AMI, or put its environment on the login PATH"',
            _run(plan, _launch_line(plan, '"$NODE_RANK"', '"$MASTER_ADDR"', '"$MASTER_PORT"')),
        ])]
    return "\n\n".join(s.strip("\n") for s in sections if s) + "\n"


SSM_HEREDOC = "EFA_INFRA_LAUNCH_SCRIPT"
SSM_TIMEOUT_SECONDS = 172800  # the longest aws:runShellScript allows (48 h): training runs long


def ssm_document(script: str, job_name: str, working_directory: str | None = None) -> dict:
    """An SSM Command document (schema 2.2) that runs a node script on the nodes it is sent to.

    SSM runs its commands with sh; the script needs bash, so it goes to a file
    that bash runs. The node list then comes from the EC2 API (or $HOSTFILE).
    """
    if SSM_HEREDOC in script:
        raise LaunchError(f"the script contains {SSM_HEREDOC}, which ends its here-document")
    if "{{" in script:
        raise LaunchError("the script contains '{{', which SSM reads as a document parameter")
    inputs: dict = {}
    if working_directory:  # aws:runShellScript's own input: the directory its commands run in
        inputs["workingDirectory"] = working_directory
    commands = [
        'script=$(mktemp "${TMPDIR:-/tmp}/efa-infra-launch.XXXXXX")',
        f"cat > \"$script\" <<'{SSM_HEREDOC}'",
        *script.splitlines(),
        SSM_HEREDOC,
        'status=0; bash "$script" || status=$?',
        'rm -f "$script"',
        'exit "$status"',
    ]
    return {
        "schemaVersion": "2.2",
        "description": f"efa-infra: launch job {job_name} on every node of its fleet",
        "mainSteps": [{
            "action": "aws:runShellScript",
            "name": "launch",
            "precondition": {"StringEquals": ["platformType", "Linux"]},
            "inputs": {"runCommand": commands, **inputs, "timeoutSeconds": str(SSM_TIMEOUT_SECONDS)},
        }],
    }
