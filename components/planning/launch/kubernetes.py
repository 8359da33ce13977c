"""A job's Kubernetes manifests, for fleets in an EKS cluster and unmanaged clusters: an Indexed Job with
its headless Service, a PyTorchJob, a TrainJob (trainjob.py) or an MPIJob, each pod holding one whole node
or, with DRA (eks.devices: dra), whole PCIe groups of one, through a ResourceClaimTemplate."""

from __future__ import annotations

import shlex

import yaml

from .. import devices, preflight, topology
from ..config import JobConfig, StackConfig
from . import shell
from .job_plan import JobPlan, LaunchError, job_plan

EFA_RESOURCE = "vpc.amazonaws.com/efa"
JOB_LABEL = "efa-infra/job"
# Where nccl-tests images keep the binaries, off PATH (aws-samples/awsome-distributed-training,
# micro-benchmarks/nccl-tests/nccl-tests.Dockerfile: git clone ... /opt/nccl-tests && make).
NCCL_TESTS_IMAGE_DIR = "/opt/nccl-tests/build"
# EFA does not cross AZs: a multi-node EFA job's pods share one. Within it they prefer
# nodes close in the network, by EKS's network topology labels (topology.py), closest layer first.
ZONE_LABEL = "topology.kubernetes.io/zone"
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


def render_manifests(cfg: StackConfig, job: JobConfig) -> list[dict]:
    """The job's Kubernetes manifests for a fleet in the stack's EKS cluster."""
    plan = job_plan(cfg, job)
    if plan.target != "eks":
        raise LaunchError(f"job {job.name!r}: the stack has no EKS cluster; use render_node_script for EC2 fleets")
    identity = [_service_account(plan)] if plan.service_account else []
    claims = [_claim_template(plan)] if _claims(plan) else []
    if plan.kind == "pytorchjob":
        return [*identity, *claims, _pytorchjob(plan, job)]
    if plan.kind == "trainjob":
        from . import trainjob  # it builds its pod with this module's functions

        return [*identity, trainjob.render(plan, job)]
    if plan.kind == "mpijob":
        return [*identity, *claims, _mpijob(plan, job)]
    return [*identity, *claims, *_indexed_job(plan, job)]


def _service_account(plan: JobPlan) -> dict:
    """The job's own service account, which its pod identity association binds to its data role. It grants nothing in
    the cluster, and its Kubernetes API token is not mounted: EKS's pod identity webhook gives the pods that run on it
    a projected token of their own (volume eks-pod-identity-token, audience pods.eks.amazonaws.com, which only the
    agent at 169.254.170.23 takes), whatever automountServiceAccountToken says (aws/amazon-eks-pod-identity-webhook
    @3bf80a34, main.go lines 87-91; pkg/handler reads no automount setting)."""
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {**_meta(plan), "name": plan.service_account},
            "automountServiceAccountToken": False}


class _PlainDumper(yaml.SafeDumper):
    """Writes a shared object out at each place it appears: no &anchor / *alias, which a reader of a
    Worker spec saying `template: *id002` would have to chase."""

    def ignore_aliases(self, data) -> bool:
        return True


def manifests_yaml(docs: list[dict]) -> str:
    """The manifests as one multi-document YAML file, for kubectl apply -f."""
    return yaml.dump_all(docs, Dumper=_PlainDumper, sort_keys=False)


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
    pre, watch = shell.checks(plan)
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
    mpirun = " ".join([*map(shlex.quote, shell.mpirun(plan, env_names)), *shell.rdma_env_arg(plan, env_names), '"$NCCL_TEST"',
                       *map(shlex.quote, plan.command[1:])])
    return resolve + "\n" + shell.run_line(plan, mpirun)


def _claims(plan: JobPlan) -> bool:
    """Whether the pod takes its devices through a resource claim (eks.devices: dra)."""
    return plan.dra and bool(plan.efa_devices or plan.accelerator_kind)


def _claim_template(plan: JobPlan) -> dict:
    """The ResourceClaimTemplate each node pod's claim is made from (devices.claim_spec)."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {**_meta(plan), "name": f"{plan.job}-{devices.CLAIM}"},
        "spec": {"spec": devices.claim_spec(efa_devices=plan.efa_devices, accelerator_kind=plan.accelerator_kind,
                                            accelerators=plan.accelerator_count, node_accelerators=plan.node_accelerators,
                                            instance_type=plan.instance_type)},
    }


def _node_pod(plan: JobPlan, job: JobConfig, name: str, command: list[str], with_env: bool = True,
              capabilities: tuple[str, ...] = EFA_CAPABILITIES) -> dict:
    """The template of a pod that holds one whole node, or its part of one: its devices (the device plugins'
    resources, or a resource claim), CPUs and memory (requests = limits, so Guaranteed QoS), /dev/shm and
    locked memory."""
    resources: dict = {"cpu": plan.cpu, "memory": plan.memory}
    if plan.efa_devices and not plan.dra:
        resources[EFA_RESOURCE] = plan.efa_devices
    if plan.accelerator_resource and not plan.dra:
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
    volumes: list[dict] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": plan.shm_size}}]
    if plan.fsx_claim:
        # The fleet's FSx file system: data and checkpoints that outlive the pod.
        container["volumeMounts"].append({"name": "fsx", "mountPath": plan.fsx_mount_path})
        volumes.append({"name": "fsx", "persistentVolumeClaim": {"claimName": plan.fsx_claim}})
    spec = _placement(plan)
    if _claims(plan):
        container["resources"]["claims"] = [{"name": devices.CLAIM}]
        spec["resourceClaims"] = [{"name": devices.CLAIM, "resourceClaimTemplateName": f"{plan.job}-{devices.CLAIM}"}]
    if plan.service_account:
        # The node pods read and write the job's data: they, and only they, run as the job's identity.
        spec["serviceAccountName"] = plan.service_account
    # EFA registers (locks) memory: ulimit -l unlimited comes from the runtime, the capability from here.
    _hardened(plan, spec, container, capabilities if plan.efa_devices else tuple(c for c in capabilities if c not in EFA_CAPABILITIES))
    # The device requests keep one pod per node, except on a type without devices; pods that take part of a
    # node may share one.
    spec["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": _labels(plan, "node")},
        "topologyKey": "kubernetes.io/hostname",
    }]}} if plan.whole_node else {}
    if plan.efa_devices and plan.nodes > 1:
        same = {"matchLabels": _labels(plan, "node")}
        spec["affinity"]["podAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": same, "topologyKey": ZONE_LABEL}],
        }
        if closer := _closer_in_the_network(plan.instance_type, same):
            spec["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] = closer
    if not spec["affinity"]:
        del spec["affinity"]
    spec["containers"] = [container]
    spec["volumes"] = volumes
    return {"metadata": {"labels": _labels(plan, "node")}, "spec": spec}


def _closer_in_the_network(instance_type: str, same: dict) -> list[dict]:
    """A preference per topology layer the type has, the closest weighted most (100, then halved each layer up)."""
    return [{"weight": max(1, 100 >> depth), "podAffinityTerm": {"labelSelector": same, "topologyKey": label}}
            for depth, label in enumerate(topology.layer_labels(instance_type))]


def _indexed_job(plan: JobPlan, job: JobConfig) -> list[dict]:
    service = plan.job  # pods are <job>-<index>.<service>
    if plan.launcher == "nccl-tests":  # on one node: config.load refuses more for an indexed Job
        command = _pod_script(plan, _nccl_tests_pod(plan, []))
    else:
        master = shlex.quote(f"{plan.job}-0.{service}")
        command = _pod_script(plan, shell.run_line(plan, shell.launch_line(plan, '"$JOB_COMPLETION_INDEX"', master, str(plan.port))))
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
    command = _pod_script(plan, shell.run_line(plan, shell.launch_line(plan, '"$RANK"', '"$MASTER_ADDR"', '"$MASTER_PORT"')))
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
