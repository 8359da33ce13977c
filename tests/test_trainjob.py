"""Kind trainjob: a Kubeflow Trainer v2 TrainJob on efa-infra's ClusterTrainingRuntime, the pods the
trainer makes of it (components/offline/trainer_model.py), and the cluster setting that installs the trainer."""

from __future__ import annotations

import copy

import pytest
import yaml

from components.offline import mocks, trainer_model
from components.planning import config, launch
from components.planning.launch import trainjob
from conftest import ROOT
from test_launch import check_manifest, node_pods, run_pod_command, schema_versions, stack


def pytorchjob_and_trainjob_pods(job: dict, **kw) -> tuple[dict, dict]:
    cfg, j = stack({**job, "kind": "pytorchjob"}, **kw)
    (pytorch,) = node_pods(launch.render_manifests(cfg, j))
    cfg, j = stack({**job, "kind": "trainjob"}, **kw)
    (train,) = node_pods(launch.render_manifests(cfg, j))
    return pytorch, train


@pytest.mark.parametrize("itype", ["p5.48xlarge", "trn2.48xlarge", "g6e.48xlarge"])
@pytest.mark.parametrize("efa_on", [True, False])
def test_the_trainers_pod_is_the_pytorchjobs_but_for_what_each_operator_sets(itype, efa_on):
    """Requests = limits (Guaranteed QoS) with the EFA, accelerator and hugepages resources, IPC_LOCK, /dev/shm,
    seccomp, no token, node selector, tolerations, same-AZ and topology affinity: all as the PyTorchJob's."""
    pytorch, train = pytorchjob_and_trainjob_pods({"efa": efa_on}, instance_type=itype)
    assert train["metadata"]["labels"] == pytorch["metadata"]["labels"]
    p_spec, t_spec = copy.deepcopy(pytorch["spec"]), copy.deepcopy(train["spec"])
    (p,), (t,) = p_spec.pop("containers"), t_spec.pop("containers")
    assert t_spec.pop("restartPolicy") == "Never"  # the PyTorchJob's replicas say so outside the template
    assert t_spec == p_spec
    # The rank, master and port variables are each operator's own; PyTorchJob's port has a name it looks for.
    assert (t.pop("name"), p.pop("name")) == ("node", "pytorch")
    assert (t.pop("ports"), p.pop("ports")) == ([{"containerPort": 29500}], [{"name": "pytorchjob-port", "containerPort": 29500}])
    pet = [e for e in t["env"] if e["name"].startswith("PET_")]
    assert [e["name"] for e in pet] == ["PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"]
    t["env"] = [e for e in t["env"] if e not in pet]
    t_cmd, p_cmd = t.pop("command"), p.pop("command")
    assert t_cmd[2].replace("$PET_NODE_RANK", "$RANK").replace("$PET_MASTER_ADDR", "$MASTER_ADDR").replace(
        "$PET_MASTER_PORT", "$MASTER_PORT") == p_cmd[2]
    assert t.pop("imagePullPolicy") == "Always" and p.pop("imagePullPolicy") == "Always"  # the runtime's, for a tag
    assert t == p
    if efa_on:
        assert t["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
        assert t["resources"]["limits"]["vpc.amazonaws.com/efa"] > 0 and "efa_infra_watch torchrun" in t_cmd[2]
        assert t_spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == \
            "topology.kubernetes.io/zone"
    assert t["resources"]["requests"] == t["resources"]["limits"]


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_the_pods_launch_from_the_variables_the_trainer_sets(launcher, tmp_path):
    cfg, job = stack({"kind": "trainjob", "launcher": launcher, "nodes": 3, "efaCheck": False}, fleet={"nodes": {"desired": 3}})
    (doc,) = launch.render_manifests(cfg, job)
    assert doc["spec"]["trainer"]["numNodes"] == 3 and doc["spec"]["trainer"]["numProcPerNode"] == 8
    (container,) = trainer_model.node_pod(trainjob.runtime(), doc)["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["PET_NODE_RANK"] = "2"  # from the completion index
    argv = run_pod_command(container["command"], env, tmp_path)
    if launcher == "torchrun":
        assert argv[:10] == ["--nnodes", "3", "--node_rank", "2", "--master_addr", "train-node-0-0.train",
                             "--master_port", "29500", "--nproc_per_node", "8"]
    else:
        assert argv[:13] == ["launch", "--multi_gpu", "--same_network", "--num_machines", "3", "--machine_rank", "2",
                             "--main_process_ip", "train-node-0-0.train", "--main_process_port", "29500", "--num_processes", "24"]
    assert argv[-3:] == ["train.py", "--epochs", "3"]
    jobset = trainer_model.jobset(trainjob.runtime(), doc)
    (rjob,) = jobset["spec"]["replicatedJobs"]
    assert (rjob["template"]["spec"]["parallelism"], rjob["template"]["spec"]["completions"]) == (3, 3)


def test_the_preflight_and_transport_check_run_in_the_trainers_pod():
    cfg, job = stack({"kind": "trainjob"})
    (doc,) = launch.render_manifests(cfg, job)
    (container,) = trainer_model.node_pod(trainjob.runtime(), doc)["spec"]["containers"]
    script = container["command"][2]
    assert "EFA check failed" in script and script.index("EFA check failed") < script.index("efa_infra_watch torchrun")
    assert {"POD_NAME", "NODE_NAME"} <= {e["name"] for e in container["env"]}


def test_the_working_directory_is_entered_by_the_command(tmp_path):
    cfg, job = stack({"kind": "trainjob", "workingDirectory": "/fsx/run 1", "efa": False})
    (doc,) = launch.render_manifests(cfg, job)
    script = doc["spec"]["trainer"]["command"][2]
    assert "cd '/fsx/run 1' || exit 1\nexec torchrun" in script
    # A TrainJob's container patch has no workingDir: the CRD refuses it.
    assert "workingDir" not in str(doc["spec"]["runtimePatches"])


def test_namespace_and_runtime():
    cfg, job = stack({"kind": "trainjob", "namespace": "efa-jobs"})
    (doc,) = launch.render_manifests(cfg, job)
    assert doc["metadata"]["namespace"] == "efa-jobs"
    assert doc["spec"]["runtimeRef"] == {"name": "efa-torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                         "kind": "ClusterTrainingRuntime"}
    assert trainer_model.jobset(trainjob.runtime(), doc)["metadata"]["namespace"] == "efa-jobs"


def test_the_runtime_validates_and_holds_what_a_trainjob_cannot_patch():
    runtime = trainjob.runtime()
    check_manifest(runtime, ["1.31.0"])
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"


def test_the_trainers_webhook_refusals_are_modelled():
    cfg, job = stack({"kind": "trainjob"})
    (doc,) = launch.render_manifests(cfg, job)
    rjob = lambda d: d["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]  # noqa: E731
    bad = copy.deepcopy(doc)
    rjob(bad)["template"]["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "X", "value": "1"}]
    with pytest.raises(trainer_model.Refused, match="no envs"):
        trainer_model.jobset(trainjob.runtime(), bad)
    bad = copy.deepcopy(doc)
    rjob(bad)["name"] = "worker"
    with pytest.raises(trainer_model.Refused, match="not in the runtime"):
        trainer_model.jobset(trainjob.runtime(), bad)
    bad = copy.deepcopy(doc)
    bad["spec"]["runtimePatches"][0]["manager"] = "efa-infra"
    with pytest.raises(trainer_model.Refused, match="domain-prefixed"):
        trainer_model.jobset(trainjob.runtime(), bad)


def test_strategic_merge_as_the_trainer_applies_a_patch():
    base = {"containers": [{"name": "node", "image": "a", "volumeMounts": [{"name": "x", "mountPath": "/x"}]}],
            "tolerations": [{"key": "a"}], "nodeSelector": {"a": "1"}}
    patch = {"containers": [{"name": "node", "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}],
             "tolerations": [{"key": "b"}], "nodeSelector": {"b": "2"}}
    assert trainer_model.strategic_merge(base, patch) == {
        "containers": [{"name": "node", "image": "a", "volumeMounts": [{"name": "x", "mountPath": "/x"},
                                                                       {"name": "dshm", "mountPath": "/dev/shm"}]}],
        "tolerations": [{"key": "b"}], "nodeSelector": {"a": "1", "b": "2"}}


@pytest.mark.parametrize("job,key,message", [
    ({"port": 29400}, "jobs[0].port", "always puts the rendezvous on port 29500"),
    ({"env": {"PET_MASTER_ADDR": "x"}}, "jobs[0].env.PET_MASTER_ADDR", "sets this itself"),
    ({"launcher": "nccl-tests", "command": []}, "jobs[0]", "kind trainjob runs torchrun or accelerate"),
])
def test_what_a_trainjob_cannot_carry_is_refused(job, key, message):
    with pytest.raises(config.ConfigError) as err:
        stack({"kind": "trainjob", **job})
    assert any(p.path == f"efa-infra:{key}" and message in p.message for p in err.value.problems), err.value


def test_a_trainjob_needs_the_trainer_on_a_cluster_the_stack_creates():
    doc = yaml.safe_load((ROOT / "stacks" / "Pulumi.prod.yaml").read_text())["config"]
    doc["efa-infra:eks"]["operators"] = ["training-operator", "mpi-operator"]
    with pytest.raises(config.ConfigError) as err:
        config.load(config.document_from_settings(doc))
    assert any("kind trainjob needs the trainer in the cluster: add trainer to efa-infra:eks.operators" in p.message
               for p in err.value.problems), err.value


def test_the_trainer_and_its_runtime_are_installed_pinned():
    settings = config.read_stack_file(ROOT / "stacks" / "Pulumi.prod.yaml")
    run = mocks.run(settings, "prod")
    assert run.error is None, run.error
    dirs = {r.name: r for r in run.of_type("kubernetes:kustomize/v2:Directory")}
    trainer = dirs["eks-trainer"]
    assert trainer.inputs["directory"] == "components/manifests/trainer"
    overlay = yaml.safe_load((ROOT / trainer.inputs["directory"] / "kustomization.yaml").read_text())
    assert overlay["resources"] == [
        f"https://github.com/kubeflow/trainer.git//manifests/overlays/manager?ref={trainjob.TRAINER_VERSION}"]
    (group,) = [r for r in run.of_type("kubernetes:yaml/v2:ConfigGroup") if r.name == "eks-trainer-runtime"]
    assert group.inputs["objs"] == [trainjob.runtime()]
    # prod runs a TrainJob next to its PyTorchJob: both render and check out against the pinned CRDs.
    cfg = config.load_file(ROOT / "stacks" / "Pulumi.prod.yaml")
    kinds = set()
    for job in cfg.jobs:
        for doc in launch.render_manifests(cfg, job):
            kinds.add(doc["kind"])
            check_manifest(doc, schema_versions(cfg))
    assert {"TrainJob", "PyTorchJob"} <= kinds
