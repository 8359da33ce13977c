"""Every example stack's jobs: rendered artifacts checked by real checkers, the
Job component's resources, and `python -m components render`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from components.planning import config, launch
from components.offline import mocks
from conftest import ROOT
from test_launch import CRD_DIR, CRD_FILES, check_manifest, pod_templates, schema_versions

STACKS = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))


def test_example_stacks_have_jobs_for_every_target():
    targets = set()
    for name in STACKS:
        cfg = config.load_file(ROOT / "stacks" / f"Pulumi.{name}.yaml")
        targets |= {launch.job_plan(cfg, j).target for j in cfg.jobs}
    assert targets == {"eks", "ec2"}


@pytest.mark.parametrize("stack", STACKS)
def test_every_rendered_artifact_of_every_example_stack_checks_out(stack, tmp_path):
    cfg = config.load_file(ROOT / "stacks" / f"Pulumi.{stack}.yaml")
    for job in cfg.jobs:
        plan = launch.job_plan(cfg, job)
        if plan.target == "eks":
            docs = launch.render_manifests(cfg, job)
            for doc in docs:
                check_manifest(doc, schema_versions(cfg))
            if plan.efa_devices and plan.nodes > 1:  # EFA does not cross AZs: every node pod says so
                pods = [t for d in docs for t in pod_templates(d) if t["metadata"]["labels"].get("app.kubernetes.io/component") == "node"]
                assert pods and all(t["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
                                    ["topologyKey"] == "topology.kubernetes.io/zone" for t in pods), (stack, job.name)
        else:
            script = tmp_path / f"{job.name}.sh"
            script.write_text(launch.render_node_script(cfg, job, stack=stack))
            subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


def test_ec2_jobs_become_ssm_documents_with_the_rendered_script():
    settings = config.read_stack_file(ROOT / "stacks" / "Pulumi.p5-ec2.yaml")
    run = mocks.run(settings, "p5-ec2")
    assert run.error is None, run.error
    cfg = config.load_file(ROOT / "stacks" / "Pulumi.p5-ec2.yaml")
    docs = {r.name: r for r in run.of_type("aws:ssm/document:Document")}
    assert set(docs) == {"nccl-efa-launch", "nccl-tcp-launch"}
    for job in cfg.jobs:
        d = docs[f"{job.name}-launch"]
        assert d.parent == job.name and d.inputs["documentType"] == "Command"
        assert json.loads(d.inputs["content"]) == launch.ssm_document(launch.render_node_script(cfg, job, stack="p5-ec2"), job.name,
                                                                      job.working_directory)
    assert run.outputs["jobs"]["nccl-efa"]["run"].startswith("aws ssm send-command --document-name <nccl-efa-launch.name> "
                                                              "--targets Key=tag:efa-infra:fleet,Values=p5")


def test_eks_jobs_export_manifests_and_apply_only_when_asked():
    settings = config.read_stack_file(ROOT / "stacks" / "Pulumi.prod.yaml")
    run = mocks.run(settings, "prod")
    assert run.error is None, run.error
    assert run.of_type("kubernetes:yaml/v2:ConfigGroup") == []
    assert run.outputs["jobs"]["pretrain"]["manifests"][0]["kind"] == "PyTorchJob"
    jobs = settings["efa-infra:jobs"]
    settings = {**settings, "efa-infra:jobs": [{**jobs[0], "apply": True}, jobs[1]]}
    applied = mocks.run(settings, "prod")
    (group,) = applied.of_type("kubernetes:yaml/v2:ConfigGroup")
    assert group.name == "pretrain-manifests" and group.inputs["objs"][0]["kind"] == "PyTorchJob"


def test_the_training_operator_leaves_mpijobs_to_the_mpi_operator():
    # Both define the MPIJob CRD (v1 and v2beta1), so prod, which runs a PyTorchJob and an
    # MPIJob, needs the training operator without its own. The names come from the real
    # MPI operator CRD and from the manifests prod's jobs render, not from the overlay.
    mpijob_crd = yaml.safe_load((CRD_DIR / CRD_FILES["MPIJob"]).read_text())["metadata"]["name"]
    cfg = config.load_file(ROOT / "stacks" / "Pulumi.prod.yaml")
    kinds = {d["kind"] for j in cfg.jobs for d in launch.render_manifests(cfg, j) if d["apiVersion"].startswith("kubeflow.org/")}
    assert kinds == {"PyTorchJob", "MPIJob"}
    overlay = yaml.safe_load((ROOT / "components" / "manifests" / "training-operator" / "kustomization.yaml").read_text())
    (base,) = overlay["resources"]
    assert base.startswith("https://github.com/kubeflow/training-operator.git//manifests/overlays/standalone?ref=v1.")
    patches = [(p.get("target"), yaml.safe_load(p["patch"])) for p in overlay["patches"]]
    deleted = [body["metadata"]["name"] for target, body in patches
               if target is None and body.get("$patch") == "delete" and body.get("kind") == "CustomResourceDefinition"]
    assert deleted == [mpijob_crd]
    (args,) = [op["value"] for target, body in patches if target == {"kind": "Deployment", "name": "training-operator"}
               for op in body if op["path"] == "/spec/template/spec/containers/0/args"]
    # The operator runs only the kinds it is installed for; MPIJob is the MPI operator's.
    assert args == [f"--enable-scheme={kind.lower()}" for kind in sorted(kinds - {"MPIJob"})]


def test_render_writes_every_jobs_artifacts(tmp_path):
    result = subprocess.run([sys.executable, "-m", "components", "render", "--stack", "prod", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".efa-infra-render", "nccl-efa.yaml", "pretrain.yaml"]
    result = subprocess.run([sys.executable, "-m", "components", "render", "--stack", "dev", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "smoke.sh").read_text().startswith("#!/usr/bin/env bash")
    assert json.loads((tmp_path / "smoke.ssm.json").read_text())["schemaVersion"] == "2.2"


def test_plan_lists_the_jobs():
    result = subprocess.run([sys.executable, "-m", "components", "plan", "--stack", "hyperpod-jobs", "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [(j["name"], j["unmanagedCluster"], j["efaDevices"], j["accelerators"]) for j in doc["jobs"]] == [
        ("finetune", True, 32, 8), ("nccl-efa", True, 32, 8)]
    assert doc["fleets"] == [] and doc["subnets"] == []
