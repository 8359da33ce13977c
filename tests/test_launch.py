"""Launch rendering: derived values, Kubernetes manifests checked against real
schemas, and the shell text the pods and nodes run."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from functools import lru_cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from components.offline import trainer_model
from components.planning import catalog, config, launch, ofi_platform, preflight
from components.planning.launch import trainjob
from conftest import DEPLOYER, strict

CRD_DIR = Path(__file__).resolve().parent / "data" / "crds"  # PyTorchJob and MPIJob: copies of ../shared/schemas/crds
# Trainer v2.3 and JobSet v0.12.0 (the one its manager overlay installs): tests/data/crds/SOURCES.md.
CRD_FILES = {"PyTorchJob": "kubeflow.org_pytorchjobs.v1.yaml", "MPIJob": "kubeflow.org_mpijobs.v2beta1.yaml",
             "TrainJob": "trainer.kubeflow.org_trainjobs.v1alpha1.yaml",
             "ClusterTrainingRuntime": "trainer.kubeflow.org_clustertrainingruntimes.v1alpha1.yaml",
             "JobSet": "jobset.x-k8s.io_jobsets.v1alpha2.yaml"}
CORE_KINDS = {"Service", "Job", "ResourceClaimTemplate", "ServiceAccount"}  # checked by kubernetes_validate's bundled schemas
K8S_VERSION = "1.31.0"


def stack(job: dict | None = None, *, instance_type: str = "p5.48xlarge", eks: bool = True,
          fleet: dict | None = None) -> tuple[config.StackConfig, config.JobConfig]:
    doc: dict = {
        "region": "us-east-1",
        "fleets": [{"name": "gpu", "instanceType": instance_type, "availabilityZone": "us-east-1a",
                    "nodes": {"desired": 2}, **(fleet or {})}],
    }
    spec = {"name": "train", "fleet": "gpu", "launcher": "torchrun", "command": ["train.py", "--epochs", "3"], **(job or {})}
    if eks:
        doc["eks"] = {"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], **DEPLOYER,
                      "operators": ["trainer", "training-operator", "mpi-operator"]}
        spec.setdefault("image", "public.ecr.aws/example/train:1")
    doc["jobs"] = [spec]
    cfg = config.load(doc)
    return cfg, cfg.jobs[0]


def pod_templates(doc: dict) -> list[dict]:
    if doc["kind"] == "Job":
        return [doc["spec"]["template"]]
    if doc["kind"] == "PyTorchJob":
        return [r["template"] for r in doc["spec"]["pytorchReplicaSpecs"].values()]
    if doc["kind"] == "MPIJob":
        return [r["template"] for r in doc["spec"]["mpiReplicaSpecs"].values()]
    if doc["kind"] == "TrainJob":  # the pods Trainer v2 creates from it, on our runtime
        return [trainer_model.node_pod(trainjob.runtime(), doc)]
    if doc["kind"] == "ClusterTrainingRuntime":
        return [r["template"]["spec"]["template"] for r in doc["spec"]["template"]["spec"]["replicatedJobs"]]
    if doc["kind"] == "JobSet":
        return [r["template"]["spec"]["template"] for r in doc["spec"]["replicatedJobs"]]
    return []


def node_containers(docs: list[dict]) -> list[dict]:
    """Containers of the pods that hold a node (not the MPI launcher)."""
    return [c for d in docs for t in pod_templates(d) if t["metadata"]["labels"].get("app.kubernetes.io/component") == "node"
            for c in t["spec"]["containers"]]


# --- derived values ----------------------------------------------------------------

TYPES = [
    # type, EFA devices, accelerator, count, resource, GPUDirect RDMA (aws-ofi-nccl's table)
    ("p4d.24xlarge", 4, "A100", 8, "nvidia.com/gpu", True),
    ("p5.48xlarge", 32, "H100", 8, "nvidia.com/gpu", True),
    ("p5en.48xlarge", 16, "H200", 8, "nvidia.com/gpu", True),
    ("p6-b300.48xlarge", 16, "B300", 8, "nvidia.com/gpu", True),
    ("trn2.48xlarge", 16, "Trainium2", 16, "aws.amazon.com/neuron", True),
    ("g6e.48xlarge", 4, "L40S", 8, "nvidia.com/gpu", False),
]


@pytest.mark.parametrize("itype,devices,accel,count,resource,rdma", TYPES)
def test_plan_derives_devices_and_efa_env_per_type(itype, devices, accel, count, resource, rdma):
    cfg, job = stack(instance_type=itype)
    plan = launch.job_plan(cfg, job)
    assert cfg.catalog().get(itype).accelerator.name == accel
    assert (plan.target, plan.instance_type, plan.nodes) == ("eks", itype, 2)
    assert (plan.efa_devices, plan.accelerator_resource, plan.accelerator_count) == (devices, resource, count)
    assert plan.procs_per_node == (64 if itype == "trn2.48xlarge" else count)  # one per logical NeuronCore on trn2
    assert plan.hugepages == "5120Mi"
    assert plan.rdma is rdma
    env = plan.env
    # The plugin sets the provider, fork safety and buffer sizes itself; FI_EFA_USE_DEVICE_RDMA is decided at run time.
    assert env == {"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET", "NCCL_SOCKET_IFNAME": "^lo,docker0"}

    (container,) = node_containers(launch.render_manifests(cfg, job)[1:])
    res = container["resources"]
    assert res["requests"] == res["limits"]
    assert res["limits"]["vpc.amazonaws.com/efa"] == devices
    assert res["limits"][resource] == count
    assert res["limits"]["hugepages-2Mi"] == "5120Mi"
    assert "memory" in res["limits"]  # Kubernetes refuses hugepages without a memory or cpu limit
    env_items = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env_items == env
    downward = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert downward == {"POD_NAME": "metadata.name", "NODE_NAME": "spec.nodeName"}  # named by the checks


def test_plan_without_efa_is_the_tcp_baseline():
    cfg, job = stack({"efa": False}, instance_type="p5.48xlarge")
    plan = launch.job_plan(cfg, job)
    assert plan.env["NCCL_NET"] == "Socket"
    assert not [k for k in plan.env if k.startswith("FI_")]
    assert "NCCL_BUFFSIZE" not in plan.env
    assert (plan.efa_devices, plan.hugepages, plan.rdma) == (0, None, False)
    docs = launch.render_manifests(cfg, job)
    (container,) = node_containers(docs)
    # The whole node still: its GPUs, 90% of its 192 vCPUs, and what the memory budget leaves.
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 8, "cpu": "172", "memory": "1736Gi"}
    assert docs[1]["spec"]["template"]["spec"]["nodeSelector"] == {"efa-infra/fleet": "gpu"}


def test_job_env_overrides_the_derived_settings():
    override = {"NCCL_DEBUG": "WARN", "FI_EFA_USE_DEVICE_RDMA": "0", "NCCL_SOCKET_IFNAME": "eth0", "EXTRA": "a b"}
    # Quieting NCCL leaves the transport check nothing to read: only with the check off (config refuses it otherwise).
    cfg, job = stack({"env": override, "efaCheck": False})
    plan = launch.job_plan(cfg, job)
    assert {k: plan.env[k] for k in override} == override
    (container,) = node_containers(launch.render_manifests(cfg, job))
    assert {e["name"]: e.get("value") for e in container["env"]}["NCCL_DEBUG"] == "WARN"

    cfg, job = stack({"env": override, "efaCheck": False}, eks=False)
    script = launch.render_node_script(cfg, job, stack="dev")
    exports = [line for line in script.splitlines() if line.startswith("export ")]
    # The script's own interface choice comes first, so job.env wins.
    assert exports.index('export NCCL_SOCKET_IFNAME="$NODE_IF" GLOO_SOCKET_IFNAME="$NODE_IF"') < exports.index("export NCCL_SOCKET_IFNAME=eth0")
    assert "export NCCL_DEBUG=WARN" in exports and "export NCCL_DEBUG=INFO" not in exports
    assert "export EXTRA='a b'" in exports


def test_plan_defaults_and_overrides_of_counts():
    cfg, job = stack(fleet={"nodes": {"desired": 3, "max": 4}})
    assert (launch.job_plan(cfg, job).nodes, launch.job_plan(cfg, job).procs_per_node) == (3, 8)
    cfg, job = stack({"nodes": 4, "procsPerNode": 2}, fleet={"nodes": {"desired": 3, "max": 4}})
    assert (launch.job_plan(cfg, job).nodes, launch.job_plan(cfg, job).procs_per_node) == (4, 2)
    # A type without accelerators: one process, no accelerator resource or toleration.
    cfg, job = stack(instance_type="c5n.18xlarge")
    plan = launch.job_plan(cfg, job)
    assert (plan.procs_per_node, plan.accelerator_resource, plan.efa_devices) == (1, None, 1)
    pod = launch.render_manifests(cfg, job)[1]["spec"]["template"]["spec"]
    assert "tolerations" not in pod
    assert pod["containers"][0]["resources"]["limits"]["vpc.amazonaws.com/efa"] == 1


def test_plan_targets_ec2_without_eks():
    cfg, job = stack(eks=False)
    plan = launch.job_plan(cfg, job)
    assert plan.target == "ec2"
    assert "NCCL_SOCKET_IFNAME" not in plan.env  # the node script picks the interface at run time
    with pytest.raises(launch.LaunchError, match="no EKS cluster"):
        launch.render_manifests(cfg, job)
    cfg, job = stack()
    with pytest.raises(launch.LaunchError, match="render_manifests"):
        launch.render_node_script(cfg, job, stack="dev")


def test_a_tcp_job_runs_on_a_type_without_efa():
    cfg, job = stack({"efa": False}, instance_type="m5.large", fleet={"efa": False})
    plan = launch.job_plan(cfg, job)
    assert (plan.efa_devices, plan.procs_per_node, plan.env["NCCL_NET"]) == (0, 1, "Socket")
    pod = launch.render_manifests(cfg, job)[1]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "1", "memory": "6Gi"}  # no devices, still the node
    assert "add" not in pod["containers"][0]["securityContext"]["capabilities"]  # no EFA: no IPC_LOCK


@pytest.mark.parametrize("instance_type,efa,shm,memory", [
    ("p5.48xlarge", True, "64Gi", "1736Gi"),  # (2,048 GiB - 5 GiB of hugepages) x 85%
    ("g6.8xlarge", True, "52Gi", "104Gi"),  # half the pod's memory: less than 64Gi
    ("m5.large", False, "3Gi", "6Gi"),  # 8 GiB x 85% = 6Gi: no hugepages without EFA
])
def test_default_shm_fits_the_pod(instance_type, efa, shm, memory):
    cfg, job = stack({"efa": efa}, instance_type=instance_type, fleet={"efa": efa})
    plan = launch.job_plan(cfg, job)
    assert (plan.shm_size, plan.memory) == (shm, memory)
    pod = launch.render_manifests(cfg, job)[1]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == shm


def test_jobs_on_unmanaged_clusters_select_nodes_by_instance_type():
    cfg = config.load({
        "region": "us-east-1",
        "clusters": [{"name": "hp", "kind": "hyperpod", "instanceType": "ml.p5.48xlarge", "nodes": 2}],
        "jobs": [{"name": "train", "fleet": "hp", "launcher": "torchrun", "command": ["train.py"], "image": "x:1"}],
    })
    plan = launch.job_plan(cfg, cfg.jobs[0])
    assert (plan.target, plan.instance_type, plan.nodes, plan.efa_devices, plan.accelerator_count) == ("eks", "p5.48xlarge", 2, 32, 8)
    assert plan.node_selector == {"node.kubernetes.io/instance-type": "ml.p5.48xlarge"}


# --- manifests ---------------------------------------------------------------------


def run_pod_command(command: list[str], env: dict[str, str], tmp_path: Path) -> list[str]:
    """Run a container command with stub launchers on PATH; returns the argv the launcher got."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name in ("torchrun", "accelerate", "mpirun"):
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(tmp_path / "argv"))}\n')
        stub.chmod(0o755)
    subprocess.run(command, env={"PATH": f"{stubs}:/usr/bin:/bin", **env}, check=True, timeout=30)
    return (tmp_path / "argv").read_text().splitlines()


def test_indexed_job_ranks_pods_by_completion_index(tmp_path):
    # efaCheck false: no EFA devices here (tests/test_preflight.py runs the checks on stand-in devices).
    cfg, job = stack({"command": ["train.py", "--name", "it's $(x)"], "efaCheck": False}, instance_type="p4d.24xlarge")
    service, batch = launch.render_manifests(cfg, job)
    assert service["spec"]["clusterIP"] == "None"
    assert (batch["spec"]["completionMode"], batch["spec"]["completions"], batch["spec"]["parallelism"]) == ("Indexed", 2, 2)
    pod = batch["spec"]["template"]
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "train"
    assert pod["metadata"]["labels"]["efa-infra/job"] == "train"
    argv = run_pod_command(pod["spec"]["containers"][0]["command"], {"JOB_COMPLETION_INDEX": "1"}, tmp_path)
    assert argv == ["--nnodes", "2", "--node_rank", "1", "--master_addr", f"train-0.{service['metadata']['name']}",
                    "--master_port", "29500", "--nproc_per_node", "8", "train.py", "--name", "it's $(x)"]


@pytest.mark.parametrize("itype,procs", [("trn1.32xlarge", 32), ("trn1n.32xlarge", 32), ("trn2.48xlarge", 64),
                                         ("trn2.3xlarge", 4), ("p5.48xlarge", 8), ("inf1.24xlarge", 16)])
def test_neuron_jobs_start_one_process_per_logical_neuroncore(itype, procs, tmp_path):
    cfg, job = stack({"efaCheck": False}, instance_type=itype)  # the command runs here, on no EFA node
    assert launch.job_plan(cfg, job).procs_per_node == procs
    pod = launch.render_manifests(cfg, job)[1]["spec"]["template"]["spec"]
    argv = run_pod_command(pod["containers"][0]["command"], {"JOB_COMPLETION_INDEX": "0"}, tmp_path)
    assert argv[argv.index("--nproc_per_node") + 1] == str(procs)
    cfg, job = stack({"procsPerNode": 16}, instance_type=itype)  # the job's own count still wins
    assert launch.job_plan(cfg, job).procs_per_node == 16


def test_every_neuron_device_with_efa_has_its_core_grouping_as_data():
    """A new Neuron generation in the catalog needs its default logical-core grouping, with a source, before
    its jobs start the right number of processes."""
    from components.planning import processes

    devices = {t.accelerator.name for t in config.load({"region": "us-east-1"}).catalog().efa_types()
               if t.accelerator and t.accelerator.kind == "neuron"}
    assert devices and devices <= set(processes._neuron_devices())
    assert all(d["source"] for d in processes._neuron_devices().values())


def test_neuron_processes_on_accelerate_and_mpirun():
    cfg, job = stack({"kind": "pytorchjob", "launcher": "accelerate", "nodes": 2}, instance_type="trn1.32xlarge")
    command = " ".join(launch.render_manifests(cfg, job)[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"])
    assert "--num_processes 64" in command  # 2 nodes x 32 NeuronCores
    cfg, job = stack({"kind": "mpijob", "launcher": "nccl-tests", "command": []}, instance_type="trn2.48xlarge")
    (doc,) = launch.render_manifests(cfg, job)
    assert doc["spec"]["slotsPerWorker"] == 64


def test_pods_hold_a_whole_node_with_efa_shm_and_locked_memory():
    cfg, job = stack({"shmSize": "128Gi"}, instance_type="trn2.48xlarge")
    pod = launch.render_manifests(cfg, job)[1]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"efa-infra/fleet": "gpu", "vpc.amazonaws.com/efa.present": "true"}
    assert pod["tolerations"] == [{"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "128Gi"}}]
    (container,) = pod["containers"]
    assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    assert container["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
    assert container["resources"]["limits"]["aws.amazon.com/neuron"] == 16
    term = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"


@pytest.mark.parametrize("kind", ["indexed-job", "pytorchjob", "mpijob"])
def test_devices_come_from_the_plugin_not_a_host_mount(kind):
    launcher = "nccl-tests" if kind == "mpijob" else "torchrun"
    cfg, job = stack({"kind": kind, "launcher": launcher})
    docs = launch.render_manifests(cfg, job)
    assert "hostPath" not in json.dumps(docs)
    mounts = [m["mountPath"] for d in docs for t in pod_templates(d) for c in t["spec"]["containers"] for m in c.get("volumeMounts", [])]
    assert mounts and not [m for m in mounts if m.startswith("/dev/infiniband")]


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_pytorchjob_master_and_workers(launcher, tmp_path):
    cfg, job = stack({"kind": "pytorchjob", "launcher": launcher, "nodes": 3, "efaCheck": False}, fleet={"nodes": {"desired": 3}})
    (doc,) = launch.render_manifests(cfg, job)
    replicas = doc["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 2)
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    # The operator finds the rendezvous port by these names.
    assert container["name"] == "pytorch"
    assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": 29500}]
    operator_env = {"RANK": "2", "MASTER_ADDR": "train-master-0", "MASTER_PORT": "29500"}
    argv = run_pod_command(container["command"], operator_env, tmp_path)
    if launcher == "torchrun":
        assert argv[:10] == ["--nnodes", "3", "--node_rank", "2", "--master_addr", "train-master-0",
                             "--master_port", "29500", "--nproc_per_node", "8"]
    else:
        assert argv[:13] == ["launch", "--multi_gpu", "--same_network", "--num_machines", "3", "--machine_rank", "2",
                             "--main_process_ip", "train-master-0", "--main_process_port", "29500", "--num_processes", "24"]
    assert argv[-3:] == ["train.py", "--epochs", "3"]

    cfg, job = stack({"kind": "pytorchjob", "nodes": 1})
    assert list(launch.render_manifests(cfg, job)[0]["spec"]["pytorchReplicaSpecs"]) == ["Master"]


def test_mpijob_launcher_passes_the_env_to_every_rank():
    cfg, job = stack({"kind": "mpijob", "launcher": "nccl-tests", "command": []}, instance_type="p5en.48xlarge")
    (doc,) = launch.render_manifests(cfg, job)
    spec = doc["spec"]
    assert spec["slotsPerWorker"] == 8
    assert spec["mpiReplicaSpecs"]["Launcher"]["replicas"] == 1
    assert spec["mpiReplicaSpecs"]["Worker"]["replicas"] == 2
    launcher = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    cmd = mpirun_line(launcher["command"])
    assert cmd[:2] == ["efa_infra_watch", "mpirun"] and cmd[cmd.index("-np") + 1] == "16"
    assert cmd[-9:] == ["$NCCL_TEST", "-b", "8", "-e", "2G", "-f", "2", "-g", "1"]
    exported = {cmd[i + 1] for i, a in enumerate(cmd) if a == "-x"}
    assert {e["name"] for e in launcher["env"] if "value" in e} <= exported
    # Set at run time, with a libfabric older than 1.18 only (tests/test_preflight.py).
    assert "${FI_EFA_USE_DEVICE_RDMA:+-x" in cmd
    worker = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["vpc.amazonaws.com/efa"] == 16
    assert launcher["resources"]["requests"] == launcher["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}


def test_nccl_tests_across_nodes_need_an_mpijob():
    with pytest.raises(config.ConfigError, match="use kind: mpijob"):
        stack({"launcher": "nccl-tests", "command": []})
    cfg, job = stack({"launcher": "nccl-tests", "command": [], "nodes": 1})
    cmd = mpirun_line(launch.render_manifests(cfg, job)[1]["spec"]["template"]["spec"]["containers"][0]["command"])
    assert cmd[cmd.index("-np") + 1] == "8" and "-H" not in cmd


def mpirun_line(command: list[str]) -> list[str]:
    """The words of the line of a container's shell command that starts mpirun, as shlex splits them."""
    assert command[:2] == ["/bin/sh", "-c"]
    (line,) = [ln for ln in command[2].splitlines() if " mpirun " in f" {ln} "]
    return shlex.split(line)


# --- every manifest against a real schema --------------------------------------------


@lru_cache(maxsize=None)
def crd(kind: str) -> tuple[str, dict]:
    path = CRD_DIR / CRD_FILES[kind]
    assert path.is_file(), f"{path} is missing: tests/data/crds/SOURCES.md names its repository, tag and path"
    doc = yaml.safe_load(path.read_text())
    (version,) = [v for v in doc["spec"]["versions"] if v.get("storage")]
    assert doc["spec"]["names"]["kind"] == kind
    return f"{doc['spec']['group']}/{version['name']}", strict(version["schema"]["openAPIV3Schema"])


def name_rule_holds(rule: str, doc: dict) -> bool:
    """A CRD's top-level CEL rule of the forms they use on the object's name (the TrainJob CRD's two); others fail."""
    name = doc["metadata"]["name"]
    if m := re.fullmatch(r"self\.metadata\.name\.matches\('(.+)'\)", rule):
        return re.search(m[1], name) is not None  # CEL matches(): RE2, unanchored unless the pattern anchors
    if m := re.fullmatch(r"size\(self\.metadata\.name\) <= (\d+)", rule):
        return len(name) <= int(m[1])
    raise AssertionError(f"a CEL rule this check does not evaluate: {rule}")


def check_manifest(doc: dict, versions: list[str]) -> None:
    """Validate against a schema, or fail: a kind without one never passes."""
    kind = doc["kind"]
    assert kind in CORE_KINDS | set(CRD_FILES), f"no schema to check kind {kind}"
    for version in versions:
        if kind in CRD_FILES:
            api_version, schema = crd(kind)
            assert doc["apiVersion"] == api_version
            jsonschema.Draft7Validator(schema).validate(doc)
            for rule in schema.get("x-kubernetes-validations") or []:
                assert name_rule_holds(rule["rule"], doc), f"{kind} {doc['metadata']['name']}: {rule['message']}"
            # The CRD schemas allow unknown fields: check the pods strictly as core PodTemplates.
            for i, template in enumerate(pod_templates(doc)):
                wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{doc['metadata']['name']}-{i}"},
                           "template": template}
                kubernetes_validate.validate(wrapped, version, strict=True)
        else:
            kubernetes_validate.validate(doc, version, strict=True)
    if kind == "TrainJob":  # and the JobSet the trainer makes of it
        check_manifest(trainer_model.jobset(trainjob.runtime(), doc), versions)


def schema_versions(cfg: config.StackConfig) -> list[str]:
    """The oldest version the cluster may run and its own; both must be bundled. With eks.devices: dra, the
    oldest is the one its drivers need."""
    oldest = K8S_VERSION
    if cfg.eks.devices == "dra":
        from components.planning import devices

        # The highest of the drivers' minimums (components/data/dra_drivers.json): DRANET's.
        oldest = "%d.%d.0" % max(devices.driver(kind).min_kubernetes for kind in ("efa", "gpu", "neuron"))
    versions = sorted({oldest, f"{cfg.eks.version}.0"})
    assert set(versions) <= set(kubernetes_validate.utils.all_versions())
    return versions


KINDS = [("indexed-job", "torchrun"), ("indexed-job", "accelerate"), ("pytorchjob", "torchrun"),
         ("pytorchjob", "accelerate"), ("trainjob", "torchrun"), ("trainjob", "accelerate"), ("mpijob", "nccl-tests")]


@pytest.mark.parametrize("itype", ["p5.48xlarge", "trn2.48xlarge", "g6e.48xlarge"])
@pytest.mark.parametrize("kind,launcher", KINDS)
@pytest.mark.parametrize("efa_on", [True, False])
def test_every_manifest_validates(itype, kind, launcher, efa_on):
    cfg, job = stack({"kind": kind, "launcher": launcher, "efa": efa_on}, instance_type=itype)
    docs = launch.render_manifests(cfg, job)
    assert docs
    for doc in docs:
        check_manifest(doc, schema_versions(cfg))


def test_the_schema_check_is_strict_and_complete():
    cfg, job = stack()
    service, batch = launch.render_manifests(cfg, job)
    versions = schema_versions(cfg)
    with pytest.raises(AssertionError, match="no schema"):
        check_manifest({"apiVersion": "example.com/v1", "kind": "Frobnicator", "metadata": {"name": "x"}}, versions)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "x"}},
                                     K8S_VERSION, strict=True)
    typo = copy.deepcopy(batch)
    typo["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        check_manifest(typo, versions)
    cfg, job = stack({"kind": "pytorchjob"})
    (doc,) = launch.render_manifests(cfg, job)
    wrong = copy.deepcopy(doc)
    wrong["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        check_manifest(wrong, versions)
    typo = copy.deepcopy(doc)
    typo["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["tolerate"] = []
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        check_manifest(typo, versions)
    # A TrainJob: its own fields, its runtime patch, and the pod the trainer makes of them.
    cfg, job = stack({"kind": "trainjob"})
    (doc,) = launch.render_manifests(cfg, job)
    check_manifest(doc, versions)
    for path in (("spec", "trainer", "numNode"),
                 ("spec", "runtimePatches", 0, "trainingRuntimeSpec", "template", "spec", "replicatedJobs", 0, "template",
                  "spec", "template", "spec", "tolerate")):
        typo = copy.deepcopy(doc)
        at = typo
        for key in path[:-1]:
            at = at[key]
        at[path[-1]] = 1
        with pytest.raises(jsonschema.ValidationError):
            check_manifest(typo, versions)
    bad_name = copy.deepcopy(doc)
    bad_name["metadata"]["name"] = "train-"
    with pytest.raises(AssertionError, match="RFC 1035"):
        check_manifest(bad_name, versions)
    typo = copy.deepcopy(doc)
    typo["spec"]["trainer"]["resourcesPerNode"]["limit"] = {}
    with pytest.raises(jsonschema.ValidationError):
        check_manifest(typo, versions)


# --- the EC2 node script, as text (tests/test_launch_netns.py runs it) -----------------------


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate", "nccl-tests"])
@pytest.mark.parametrize("efa_on,efa_check", [(True, True), (True, False), (False, True)])
def test_node_script_is_valid_bash(launcher, efa_on, efa_check, tmp_path):
    cfg, job = stack({"launcher": launcher, "efa": efa_on, "efaCheck": efa_check}, eks=False)
    script = launch.render_node_script(cfg, job, stack="dev")
    path = tmp_path / "launch.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)
    assert script.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in script
    assert "export EFA_INFRA_STACK=dev" in script
    assert ("EFA check failed" in script) is (efa_on and efa_check)
    assert ("efaCheck is false" in script) is (efa_on and not efa_check)


def test_node_script_finds_the_fleet_by_tag():
    cfg, job = stack(eks=False, fleet={"name": "big"}, job={"fleet": "big"})
    script = launch.render_node_script(cfg, job, stack="prod-1")
    assert "export EFA_INFRA_STACK=prod-1" in script
    listing = script.index("raw_ips=$(aws ec2 describe-instances") + len("raw_ips=$(")  # the node list, not the topology's
    call = " ".join(script[listing:].split("\n", 4)[:4]).replace("\\", " ").split()
    assert call[:5] == ["aws", "ec2", "describe-instances", "--region", '"$REGION"']
    assert '"Name=tag:$FLEET_TAG,Values=$FLEET"' in call
    assert '"Name=tag:$STACK_TAG,Values=$EFA_INFRA_STACK"' in call
    # The tags EfaFleet puts on every instance of the fleet.
    assert "FLEET_TAG=efa-infra:fleet STACK_TAG=efa-infra:stack" in script
    assert "Name=instance-state-name,Values=running" in call
    assert "'Reservations[].Instances[].PrivateIpAddress'" in call
    assert "FLEET=big" in script and "REGION=us-east-1" in script
    with pytest.raises(launch.LaunchError, match="stack name"):
        launch.render_node_script(cfg, job, stack="")


def test_manifests_yaml_round_trips():
    cfg, job = stack()
    docs = launch.render_manifests(cfg, job)
    assert list(yaml.safe_load_all(launch.manifests_yaml(docs))) == docs


def test_ssm_document_runs_the_script_with_bash(tmp_path):
    out = tmp_path / "out"
    # Bash-only syntax and a quote-laden line: sh could run neither, and both must arrive intact.
    script = (f"#!/usr/bin/env bash\nset -euo pipefail\narr=(a \"it's \\$x\")\n[[ ${{#arr[@]}} == 2 ]]\n"
              f"printf '%s|' \"${{arr[@]}}\" \"$HOSTFILE\" > {shlex.quote(str(out))}\nexit 3\n")
    doc = launch.ssm_document(script, "train")
    (step,) = doc["mainSteps"]
    assert (doc["schemaVersion"], step["action"]) == ("2.2", "aws:runShellScript")
    commands = "\n".join(step["inputs"]["runCommand"])
    done = subprocess.run(["/bin/sh", "-c", commands], env={"PATH": "/usr/bin:/bin", "HOSTFILE": "/etc/hosts", "TMPDIR": str(tmp_path)},
                          timeout=30)
    assert done.returncode == 3  # the script's own status reaches SSM
    assert out.read_text() == "a|it's $x|/etc/hosts|"
    assert not list(tmp_path.glob("efa-infra-launch.*"))  # the copy is removed
    with pytest.raises(launch.LaunchError, match="here-document"):
        launch.ssm_document(f"echo {launch.SSM_HEREDOC}\n", "train")
    with pytest.raises(launch.LaunchError, match="document parameter"):
        launch.ssm_document("echo '{{ x }}'\n", "train")


# --- the environment against aws-ofi-nccl's own table ----------------------------------


def test_env_leaves_to_the_plugin_what_it_sets_on_every_efa_type():
    types = [t for t in catalog.Catalog().efa_types()]
    assert len(types) > 300
    cfg = config.load({
        "region": "us-east-1",
        "clusters": [{"name": f"c{i}", "kind": "eks", "instanceType": t.name, "nodes": 2} for i, t in enumerate(types)],
        "jobs": [{"name": f"j{i}", "fleet": f"c{i}", "launcher": "torchrun", "command": ["t.py"], "image": "x:1"}
                 for i in range(len(types))],
    })
    seen = set()
    for itype, job in zip(types, cfg.jobs):
        plan = launch.job_plan(cfg, job)
        entry = ofi_platform.platform(itype.name)
        seen.add(entry.name if entry else None)
        # Nothing the plugin fills in itself, nothing it leaves alone on purpose, no provider, no forced RDMA.
        plugin = ofi_platform.plugin_sets(itype)
        assert not set(plan.env) & (set(plugin) | {"FI_PROVIDER", "FI_EFA_FORK_SAFE", "FI_EFA_USE_DEVICE_RDMA"}), itype.name
        assert plan.env == {"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET", "NCCL_SOCKET_IFNAME": "^lo,docker0"}
        # FI_EFA_USE_DEVICE_RDMA: only on the plugin's GPUDirect RDMA types, and only decided at run time.
        assert plan.rdma is bool(entry and entry.gdr_required), itype.name
        script = launch.render_manifests(cfg, job)[1]["spec"]["template"]["spec"]["containers"][0]["command"][2]
        assert (preflight.DEVICE_RDMA.strip() in script) is plan.rdma
    # Every entry of the table is reached but p-series, which is for P types after p6-b300 (p6e-gb200 on), none in the data.
    table = {e["name"] for e in ofi_platform._table()["platforms"]}
    assert seen == table - {"p-series"} | {None}


@pytest.mark.parametrize("itype,entry,rdma,buffsize", [
    ("p5.4xlarge", "p5.4xlarge", False, None),  # by type: not p5's entry
    ("p5.48xlarge", "p5/p5e", True, "8388608"),
    ("p5en.48xlarge", "p5en/p6-b200", True, "8388608"),
    ("p6-b300.48xlarge", "p6-b300", True, "8388608"),
    ("g5.48xlarge", "g5.48xlarge", False, None),
    ("g6e.48xlarge", None, False, None),
    ("trn2.48xlarge", "Trainium Family", True, None),
])
def test_the_table_as_encoded(itype, entry, rdma, buffsize):
    t = catalog.get(itype)
    got = ofi_platform.platform(itype)
    assert (got.name if got else None, ofi_platform.uses_device_rdma(t)) == (entry, rdma)
    assert ofi_platform.plugin_sets(t).get("NCCL_BUFFSIZE") == buffsize
    # The Neuron build leaves FI_EFA_FORK_SAFE alone on purpose; the NVIDIA one sets it.
    assert ("FI_EFA_FORK_SAFE" in ofi_platform.plugin_sets(t)) is (t.accelerator.kind == "gpu")


def test_nccl_debug_is_a_job_key():
    cfg, job = stack({"ncclDebug": "WARN", "efaCheck": False})
    assert launch.job_plan(cfg, job).env == {"NCCL_DEBUG": "WARN", "NCCL_SOCKET_IFNAME": "^lo,docker0"}
    with pytest.raises(config.ConfigError) as err:
        stack({"ncclDebug": "WARN"})
    (problem,) = err.value.problems
    assert problem.path == "efa-infra:jobs[0].ncclDebug" and "efaCheck: false" in problem.message
    cfg, job = stack({"ncclDebug": "WARN", "efa": False})  # the TCP baseline has no transport check
    assert launch.job_plan(cfg, job).env["NCCL_DEBUG"] == "WARN"
    with pytest.raises(config.ConfigError, match=r"jobs\[0\]\.ncclDebug: .*'TRACE'"):
        stack({"ncclDebug": "TRACE"})


# --- placement: one AZ, close in the network ------------------------------------------


@pytest.mark.parametrize("kind,launcher", KINDS)
def test_multi_node_efa_pods_share_one_az_and_prefer_close_nodes(kind, launcher):
    cfg, job = stack({"kind": kind, "launcher": launcher})
    (pod,) = node_pods(launch.render_manifests(cfg, job))
    affinity = pod["spec"]["affinity"]["podAffinity"]
    (same_az,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    assert same_az == {"labelSelector": {"matchLabels": pod["metadata"]["labels"]}, "topologyKey": "topology.kubernetes.io/zone"}
    preferred = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [(p["podAffinityTerm"]["topologyKey"], p["weight"]) for p in preferred] == [
        ("topology.k8s.aws/network-node-layer-3", 100), ("topology.k8s.aws/network-node-layer-2", 50),
        ("topology.k8s.aws/network-node-layer-1", 25)]
    assert all(p["podAffinityTerm"]["labelSelector"] == same_az["labelSelector"] for p in preferred)
    # p6-b200 and p6-b300 report 4 layers: the closest, layer 4, comes first; a type without topology has no preference.
    for itype, layers in (("p6-b200.48xlarge", [4, 3, 2, 1]), ("p6-b300.48xlarge", [4, 3, 2, 1]), ("g5.48xlarge", [])):
        cfg, job = stack({"kind": kind, "launcher": launcher}, instance_type=itype)
        (pod,) = node_pods(launch.render_manifests(cfg, job))
        preferred = pod["spec"]["affinity"]["podAffinity"].get("preferredDuringSchedulingIgnoredDuringExecution", [])
        assert [(p["podAffinityTerm"]["topologyKey"], p["weight"]) for p in preferred] == [
            (f"topology.k8s.aws/network-node-layer-{n}", w) for n, w in zip(layers, (100, 50, 25, 12))]
    # One node, or no EFA: nothing to keep together.
    for one in ({"nodes": 1}, {"efa": False}):
        if kind == "indexed-job" and launcher == "nccl-tests":
            continue
        cfg, job = stack({"kind": kind, "launcher": launcher, **one})
        (pod,) = node_pods(launch.render_manifests(cfg, job))
        assert "podAffinity" not in pod["spec"]["affinity"]


def test_jobs_on_unmanaged_clusters_carry_the_same_az_rule():
    cfg = config.load({
        "region": "us-west-2",
        "clusters": [{"name": "hp", "kind": "hyperpod", "instanceType": "ml.p5.48xlarge", "nodes": 4}],
        "jobs": [{"name": "train", "fleet": "hp", "launcher": "torchrun", "command": ["train.py"], "image": "x:1"},
                 {"name": "nccl", "fleet": "hp", "launcher": "nccl-tests", "kind": "mpijob", "image": "x:1", "nodes": 2}],
    })
    for job in cfg.jobs:
        docs = launch.render_manifests(cfg, job)
        (pod,) = node_pods(docs)
        assert pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == \
            "topology.kubernetes.io/zone"
        for doc in docs:
            check_manifest(doc, [K8S_VERSION])


def node_pods(docs: list[dict]) -> list[dict]:
    """The pod templates that hold a node, one per distinct template."""
    out = []
    for d in docs:
        for t in pod_templates(d):
            if t["metadata"]["labels"].get("app.kubernetes.io/component") == "node" and t not in out:
                out.append(t)
    return out


# --- the working directory ----------------------------------------------------------


def test_working_directory_is_where_the_launch_runs():
    cfg, job = stack({"workingDirectory": "/fsx/team/run1"})
    for c in node_containers(launch.render_manifests(cfg, job)):
        assert c["workingDir"] == "/fsx/team/run1"
    cfg, job = stack({"workingDirectory": "/fsx/team/run1"}, eks=False)
    script = launch.render_node_script(cfg, job, stack="dev")
    assert "WORKING_DIRECTORY=/fsx/team/run1" in script and 'cd "$WORKING_DIRECTORY" ||' in script
    (step,) = launch.ssm_document(script, job.name, job.working_directory)["mainSteps"]
    assert step["inputs"]["workingDirectory"] == "/fsx/team/run1"
    (step,) = launch.ssm_document(script, job.name)["mainSteps"]
    assert "workingDirectory" not in step["inputs"]
    with pytest.raises(config.ConfigError, match=r"jobs\[0\]\.workingDirectory: .*'fsx/run'"):
        stack({"workingDirectory": "fsx/run"})
