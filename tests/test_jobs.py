"""Every example stack's jobs: rendered artifacts checked by real checkers, the
Job component's resources, and `python -m components render`."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from components.planning import config, launch
from components.offline import mocks
from conftest import ROOT, base_doc, settings_of
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
    request = sent(run.outputs["jobs"]["nccl-efa"]["run"], "us-east-1")
    assert request["DocumentName"] == "<nccl-efa-launch.name>"
    assert request["Targets"] == [{"Key": "tag:efa-infra:fleet", "Values": ["p5"]}, {"Key": "tag:efa-infra:stack", "Values": ["p5-ec2"]}]


def sent(command: str, region: str) -> dict:
    """The SendCommand request of a `run` output, after checking it is the AWS CLI's send-command in `region`
    with the request whole and valid by botocore's SSM model."""
    import botocore.session
    import botocore.validate

    argv = shlex.split(command)
    assert argv[:3] == ["aws", "ssm", "send-command"] and argv[3:6] == ["--region", region, "--cli-input-json"] and len(argv) == 7
    request = json.loads(argv[6])
    # The mocks' stand-in for the document's name, as Pulumi's auto-naming makes it: the resource name and 7 characters.
    real = {**request, "DocumentName": re.sub(r"^<(.+)\.name>$", r"\1-1a2b3c4", request["DocumentName"])}
    shape = botocore.session.get_session().get_service_model("ssm").operation_model("SendCommand").input_shape
    report = botocore.validate.ParamValidator().validate(real, shape)
    assert not report.has_errors(), report.generate_report()
    # The model's patterns and maximum lengths, which botocore leaves to the service.
    for key, value in real.items():
        rules = shape.members[key].metadata
        if isinstance(value, str):
            assert len(value) <= rules.get("max", len(value)) and re.fullmatch(rules.get("pattern", ".*"), value), (key, value, rules)
    return request


def ssm_concurrency(request: dict, targets: int) -> int:
    """How many of `targets` nodes SSM runs a command on at once: MaxConcurrency, a count or a percentage of the
    targets (at least 1), 50 when absent (SendCommand API reference)."""
    value = request.get("MaxConcurrency", "50")
    if value.endswith("%"):
        return max(1, targets * int(value[:-1]) // 100)
    return min(int(value), targets)


def test_a_launch_reaches_every_node_of_a_fleet_larger_than_ssms_default_and_keeps_every_nodes_output():
    doc = base_doc(region="eu-west-1", jobs=[{"name": "nccl", "fleet": "gpu", "launcher": "nccl-tests"}])
    doc["fleets"][0].update(availabilityZone="eu-west-1a", nodes={"desired": 64, "max": 64})
    run = mocks.run(settings_of(doc), "big")
    assert run.error is None, run.error
    out = run.outputs["jobs"]["nccl"]
    request = sent(out["run"], "eu-west-1")
    assert ssm_concurrency({}, 64) == 50  # what the launch got before: 14 nodes never got the command
    assert ssm_concurrency(request, 64) == 64 and request["MaxErrors"] == "0"
    # Output goes to the fleet's own log group, kept a year, which the nodes may write to and nothing else.
    group = run.one("aws:cloudwatch/logGroup:LogGroup", "gpu-run-output").inputs
    assert request["CloudWatchOutputConfig"] == {"CloudWatchLogGroupName": group["name"], "CloudWatchOutputEnabled": True}
    assert out["logGroup"] == group["name"] == "/efa-infra/big/gpu/run-command" and group["retentionInDays"] == 365
    policy = run.one("aws:iam/rolePolicy:RolePolicy", "gpu-run-output").inputs
    assert policy["role"] == "<gpu-node.id>"
    writes, describe = json.loads(policy["policy"])["Statement"]
    assert writes["Resource"] == "<gpu-run-output.arn>:*" and describe["Action"] == "logs:DescribeLogGroups"
    assert set(writes["Action"]) == {"logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"}


def test_the_run_output_policy_is_one_iam_takes():
    import boto3
    import moto

    from components.resources.fleet import run_output_policy

    with moto.mock_aws():  # moto checks policy documents as IAM does
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_role(RoleName="node", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))
        good = run_output_policy("arn:aws:logs:us-east-1:123456789012:log-group:/efa-infra/big/gpu/run-command")
        iam.put_role_policy(RoleName="node", PolicyName="run-output", PolicyDocument=json.dumps(good))
        good["Statement"][0]["Action"] = "logs CreateLogStream"
        with pytest.raises(iam.exceptions.MalformedPolicyDocumentException):  # the check is real
            iam.put_role_policy(RoleName="node", PolicyName="broken", PolicyDocument=json.dumps(good))


def test_eks_jobs_export_manifests_and_apply_only_when_asked():
    settings = config.read_stack_file(ROOT / "stacks" / "Pulumi.prod.yaml")
    run = mocks.run(settings, "prod")
    assert run.error is None, run.error
    job_groups = lambda r: [g for g in r.of_type("kubernetes:yaml/v2:ConfigGroup") if g.name.endswith("-manifests")]  # noqa: E731
    assert job_groups(run) == []
    assert run.outputs["jobs"]["pretrain"]["manifests"][0]["kind"] == "PyTorchJob"
    jobs = settings["efa-infra:jobs"]
    settings = {**settings, "efa-infra:jobs": [{**jobs[0], "apply": True}, *jobs[1:]]}
    applied = mocks.run(settings, "prod")
    (group,) = job_groups(applied)
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
    assert sorted(p.name for p in tmp_path.iterdir()) == [".efa-infra-render", "nccl-efa.yaml", "pretrain-v2.yaml", "pretrain.yaml"]
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
