"""eks.devices: dra. The drivers a cluster gets, the Kubernetes versions they need, the claims a job's pods
make, and what the DRA allocator gives them on a node (tests/dra_model.py), p5's PCIe groups included."""

from __future__ import annotations

import copy

import pytest

import dra_model
from components.offline import mocks
from components.planning import config, devices, launch
from conftest import DEPLOYER, ROOT, base_doc, settings_of
from test_launch import check_manifest, node_pods, pod_templates, schema_versions

RELEASE = "kubernetes:helm.sh/v3:Release"


def dra_doc(instance_type: str = "p5.48xlarge", version: str = "1.35", job: dict | None = None, **eks) -> dict:
    doc = base_doc(eks={"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], **DEPLOYER, "version": version,
                        "devices": "dra", "operators": ["training-operator"], **eks},
                   fleets=[{"name": "gpu", "instanceType": instance_type, "availabilityZone": "us-east-1a", "nodes": {"desired": 2}}])
    doc["jobs"] = [{"name": "train", "fleet": "gpu", "launcher": "torchrun", "command": ["train.py"],
                    "image": "public.ecr.aws/example/train:1", **(job or {})}]
    return doc


def claim_and_pod(cfg: config.StackConfig, job: config.JobConfig) -> tuple[dict, dict]:
    docs = launch.render_manifests(cfg, job)
    (template,) = [d for d in docs if d["kind"] == "ResourceClaimTemplate"]
    (pod,) = node_pods(docs)
    return template, pod


# --- the cluster: drivers, not plugins, at a version they support -----------------------------------


def test_a_p5_stack_with_dra_registers_the_drivers_and_no_device_plugin():
    run = mocks.run(config.read_stack_file(ROOT / "stacks" / "Pulumi.eks-dra.yaml"), "eks-dra")
    assert run.error is None, run.error
    charts = {r.inputs["chart"]: r for r in run.of_type(RELEASE)}
    assert set(charts) == {devices.driver("efa").chart[0], devices.driver("gpu").chart[0]}
    for kind in ("efa", "gpu"):
        d = devices.driver(kind)
        release = charts[d.chart[0]]
        assert (release.inputs["version"], release.inputs["namespace"]) == (d.chart[2], d.namespace)
    # The same stack on plugins gets the plugins and no driver.
    settings = config.read_stack_file(ROOT / "stacks" / "Pulumi.eks-dra.yaml")
    plugins = {**settings, "efa-infra:eks": {**settings["efa-infra:eks"], "devices": "plugins"},
               "efa-infra:jobs": [j for j in settings["efa-infra:jobs"] if "acceleratorsPerNode" not in j]}
    run = mocks.run(plugins, "eks-dra")
    assert {r.inputs["chart"] for r in run.of_type(RELEASE)} == {"aws-efa-k8s-device-plugin", "nvidia-device-plugin"}


@pytest.mark.parametrize("instance_type,version,needed", [
    ("p5.48xlarge", "1.34", "1.35"),  # DRANET (EFA) asks for 1.35
    ("trn2.48xlarge", "1.33", "1.35"),
    ("g5.2xlarge", "1.33", "1.34"),  # no EFA: NVIDIA's driver alone, 1.34
])
def test_dra_below_the_drivers_kubernetes_is_refused_naming_the_key(instance_type, version, needed):
    doc = dra_doc(instance_type, version)
    doc["fleets"][0]["efa"] = instance_type != "g5.2xlarge"
    doc["jobs"][0]["efa"] = doc["fleets"][0]["efa"]
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    (problem,) = [p for p in err.value.problems if p.path == "efa-infra:eks.devices"]
    assert f"dra needs Kubernetes {needed} or newer" in problem.message
    assert f"efa-infra:eks.version is {version}" in problem.message
    doc["eks"]["version"] = needed
    config.load(doc)
    run = mocks.run(settings_of(dra_doc(instance_type, version)), "t")
    assert run.error and run.resources == []


def test_dra_is_for_a_cluster_the_stack_creates():
    doc = dra_doc(existing={"clusterName": "shared"})
    doc["eks"].pop("availabilityZones")
    doc["eks"].pop("operators")
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    assert any(p.path == "efa-infra:eks.devices" and "a cluster the stack creates" in p.message for p in err.value.problems)


def test_the_classes_the_claims_name_are_those_the_drivers_create():
    for kind in ("efa", "gpu", "neuron"):
        assert devices.driver(kind).device_class in dra_model.DEVICE_CLASSES
    for name, expression in dra_model.DEVICE_CLASSES.items():
        node = dra_model.published("p5.48xlarge")
        picked = {d.driver for d in node if dra_model.selects(expression, d)}
        assert picked <= {devices.driver(k).driver for k in ("efa", "gpu", "neuron") if devices.driver(k).device_class == name}


# --- the pods' claims and what the allocator gives them ------------------------------------------------


@pytest.mark.parametrize("kind,launcher", [("indexed-job", "torchrun"), ("pytorchjob", "torchrun"), ("mpijob", "nccl-tests")])
def test_a_whole_node_job_gets_every_device_through_its_claim(kind, launcher):
    cfg = config.load(dra_doc(job={"kind": kind, "launcher": launcher, **({"command": []} if kind == "mpijob" else {})},
                              operators=["training-operator", "mpi-operator"]))
    job = cfg.jobs[0]
    template, pod = claim_and_pod(cfg, job)
    for doc in launch.render_manifests(cfg, job):
        check_manifest(doc, schema_versions(cfg))
    (container,) = pod["spec"]["containers"]
    limits = container["resources"]["limits"]
    assert "vpc.amazonaws.com/efa" not in limits and "nvidia.com/gpu" not in limits  # the plugins' resources: none
    assert container["resources"]["requests"] == limits  # Guaranteed QoS: CPU and memory
    assert container["resources"]["claims"] == [{"name": "devices"}]
    assert pod["spec"]["resourceClaims"] == [{"name": "devices", "resourceClaimTemplateName": template["metadata"]["name"]}]
    assert template["metadata"]["namespace"] == job.namespace
    got = dra_model.allocate(template["spec"]["spec"], dra_model.published("p5.48xlarge"))
    assert (len(got["gpu"]), len(got["efa"])) == (8, 32)
    assert pod["spec"]["affinity"]["podAntiAffinity"]  # one pod per node
    assert container["securityContext"]["capabilities"]["add"][0] == "IPC_LOCK" and "efa_found=0" in container["command"][2]


def test_half_a_p5_gets_four_gpus_and_the_efa_devices_on_their_pcie_roots():
    cfg = config.load(dra_doc(job={"acceleratorsPerNode": 4}))
    job = cfg.jobs[0]
    plan = launch.job_plan(cfg, job)
    assert (plan.accelerator_count, plan.efa_devices, plan.procs_per_node) == (4, 16, 4)
    whole = launch.job_plan(config.load(dra_doc()), config.load(dra_doc()).jobs[0])
    assert int(plan.cpu) == int(whole.cpu) // 2 and int(plan.memory[:-2]) == int(whole.memory[:-2]) // 2
    assert (plan.hugepages, whole.hugepages) == ("2560Mi", "5120Mi")  # two such pods fit the node's reserve
    template, pod = claim_and_pod(cfg, job)
    for doc in launch.render_manifests(cfg, job):
        check_manifest(doc, schema_versions(cfg))
    node = dra_model.published("p5.48xlarge")
    got = dra_model.allocate(template["spec"]["spec"], node)
    gpus = [d for r, ds in got.items() if r.startswith("gpu") for d in ds]
    efas = [d for r, ds in got.items() if r.startswith("efa") for d in ds]
    assert (len(gpus), len(efas)) == (4, 16)
    root = devices.pcie_root_attribute()
    for i in range(4):  # each GPU's EFA devices are the four on its root, as AWS's topology places them
        (gpu,) = got[f"gpu-{i}"]
        topology = next(g for g in devices.topology("p5.48xlarge") if g["root"] == gpu.attributes[root])
        assert sorted(d.attributes["dra.net/pciAddress"] for d in got[f"efa-{i}"]) == topology["efa"]
    # A second half-node pod fits on the same node, on the other four roots.
    again = dra_model.allocate(template["spec"]["spec"], node, taken={d.name for ds in got.values() for d in ds})
    assert {d.attributes[root] for ds in again.values() for d in ds}.isdisjoint({d.attributes[root] for d in gpus})
    assert dra_model.allocate(template["spec"]["spec"], node, taken={d.name for ds in [*got.values(), *again.values()] for d in ds}) is None
    # The preflight counts what the claim gives; two such pods may share a node.
    script = pod["spec"]["containers"][0]["command"][2]
    assert "expected 16 EFA devices" in script and "expected 4 NVIDIA GPUs" in script and "expected 16\"" in script
    assert "podAntiAffinity" not in pod["spec"].get("affinity", {})


def test_without_the_constraint_the_efa_devices_land_on_other_roots():
    """Why the claim constrains each pair: with GPU 0 held by another claim, an unconstrained request takes
    the first free EFA devices, which sit on GPU 0's root, not on the GPUs the pod got."""
    cfg = config.load(dra_doc(job={"acceleratorsPerNode": 4}))
    template, _ = claim_and_pod(cfg, cfg.jobs[0])
    node = dra_model.published("p5.48xlarge")
    held = {"gpu-0"}
    root = devices.pcie_root_attribute()
    aligned = dra_model.allocate(template["spec"]["spec"], node, taken=held)
    assert all(aligned[f"gpu-{i}"][0].attributes[root] == aligned[f"efa-{i}"][0].attributes[root] for i in range(4))
    loose = copy.deepcopy(template["spec"]["spec"])
    del loose["devices"]["constraints"]
    unaligned = dra_model.allocate(loose, node, taken=held)
    assert any(unaligned[f"gpu-{i}"][0].attributes[root] != unaligned[f"efa-{i}"][0].attributes[root] for i in range(4))


def test_p4d_takes_pairs_of_gpus_with_their_one_efa_device():
    cfg = config.load(dra_doc("p4d.24xlarge", job={"acceleratorsPerNode": 4}))
    plan = launch.job_plan(cfg, cfg.jobs[0])
    assert (plan.accelerator_count, plan.efa_devices) == (4, 2)
    template, _ = claim_and_pod(cfg, cfg.jobs[0])
    got = dra_model.allocate(template["spec"]["spec"], dra_model.published("p4d.24xlarge"))
    root = devices.pcie_root_attribute()
    for i in range(2):
        assert len(got[f"gpu-{i}"]) == 2 and {d.attributes[root] for d in [*got[f"gpu-{i}"], *got[f"efa-{i}"]]} == \
            {got[f"efa-{i}"][0].attributes[root]}


@pytest.mark.parametrize("doc_changes,key,message", [
    ({"instance_type": "p4d.24xlarge", "job": {"acceleratorsPerNode": 3}}, "jobs[0].acceleratorsPerNode", "take a multiple of 2"),
    ({"job": {"acceleratorsPerNode": 9}}, "jobs[0].acceleratorsPerNode", "9, but a p5.48xlarge has 8"),
    ({"instance_type": "p5en.48xlarge", "job": {"acceleratorsPerNode": 4}}, "jobs[0].acceleratorsPerNode", "PCIe topology is known"),
    ({"devices": "plugins", "job": {"acceleratorsPerNode": 4}}, "jobs[0].acceleratorsPerNode", "needs efa-infra:eks.devices: dra"),
    ({"job": {"kind": "trainjob"}, "operators": ["trainer"]}, "jobs[0].kind", "no resourceClaims"),
])
def test_what_a_job_cannot_ask_of_its_nodes_devices_is_refused(doc_changes, key, message):
    changes = dict(doc_changes)
    doc = dra_doc(changes.pop("instance_type", "p5.48xlarge"), job=changes.pop("job", None), **changes)
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    assert any(p.path == f"efa-infra:{key}" and message in p.message for p in err.value.problems), err.value


def test_on_plugins_every_pod_still_holds_a_whole_node_with_the_plugins_resources():
    cfg = config.load(dra_doc(devices="plugins"))
    docs = launch.render_manifests(cfg, cfg.jobs[0])
    assert [d["kind"] for d in docs] == ["Service", "Job"]
    (pod,) = [t for d in docs for t in pod_templates(d)]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["vpc.amazonaws.com/efa"] == 32
    assert "resourceClaims" not in pod["spec"]


def test_a_trainium_node_under_dra_claims_every_neuron_and_efa_device():
    cfg = config.load(dra_doc("trn2.48xlarge"))
    template, pod = claim_and_pod(cfg, cfg.jobs[0])
    assert template["spec"]["spec"]["devices"]["requests"] == [
        {"name": "neuron", "exactly": {"deviceClassName": "neuron.aws.com", "allocationMode": "All"}},
        {"name": "efa", "exactly": {"deviceClassName": "efa.networking.k8s.aws", "allocationMode": "All"}}]
    assert "aws.amazon.com/neuron" not in pod["spec"]["containers"][0]["resources"]["limits"]
    for doc in launch.render_manifests(cfg, cfg.jobs[0]):
        check_manifest(doc, schema_versions(cfg))
    run = mocks.run(settings_of(dra_doc("trn2.48xlarge")), "t")
    (neuron,) = [r for r in run.of_type(RELEASE) if "neuron" in r.inputs["chart"]]
    assert neuron.inputs["values"]["draDriver"]["enabled"] and not neuron.inputs["values"]["devicePlugin"]["enabled"]


def test_dra_with_a_karpenter_fleet_is_refused_naming_the_fleet():
    doc = dra_doc()
    doc["fleets"][0]["provisioner"] = "karpenter"
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    assert any(p.path == "efa-infra:fleets[0].provisioner" and "before Karpenter 1.15" in p.message
               for p in err.value.problems), err.value
