"""The deployer's path to the API server: declared (eks.deployer), refused when it cannot work, built (a rule of
ours on the cluster security group for the private endpoint), checked as the flow "deployer to the API server",
and followed by the pipelines, which run each stack's `pulumi up` where its config says."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import yaml

from components.offline import flows, mocks
from components.planning import config, deployer
from conftest import ROOT, STACKS, settings_of, stack_settings

NEED = "deployer to the API server (TCP 443)"
EKS_STACKS = [s for s in STACKS if config.load_file(ROOT / "stacks" / f"Pulumi.{s}.yaml").eks.enabled]
SHARED_VPC = {"existing": {"vpcName": "ml-shared", "privateSubnetIds": {"us-east-1a": "subnet-0a1b2c3d4e5f60718",
                                                                       "us-east-1b": "subnet-0a1b2c3d4e5f60719"}}}


def deployer_verdicts(settings: dict, stack: str, resources: list | None = None) -> dict[str, flows.Verdict]:
    cfg = config.load(config.document_from_settings(settings))
    if resources is None:
        run = mocks.run(settings, stack)
        assert run.error is None, run.error
        resources = run.resources
    return {v.need.sender: v for v in flows.model(resources, deployer.sources(cfg)).verdicts() if v.need.name == NEED}


def test_there_are_example_eks_stacks():
    assert {"prod", "eks-capacity-block", "eks-pinned-ami"} <= set(EKS_STACKS)


@pytest.mark.parametrize("stack", EKS_STACKS)
def test_every_example_eks_stack_plans_its_deployer_flow_allowed(stack):
    result = subprocess.run([sys.executable, "-m", "components", "plan", "--stack", stack, "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    mine = [f for f in doc["flows"] if f["flow"] == NEED]
    assert mine and all(f["allowed"] for f in mine), mine
    # It comes through the public endpoint, limited to the runner's addresses: the stack creates its VPC.
    assert {f["to"] for f in mine} == {"API server (public endpoint)"} and {f["ingress"] for f in mine} == {"eks-public-endpoint"}
    assert doc["runsOn"] == doc["cluster"]["deployer"]["runsOn"] != deployer.HOSTED_RUNNER


def problems(doc: dict) -> list[config.Problem]:
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    return err.value.problems


def eks_doc(network: dict | None = None, **eks) -> dict:
    doc = {"region": "us-east-1", "eks": {"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], **eks},
           "fleets": [{"name": "gpu", "instanceType": "g6.8xlarge", "availabilityZone": "us-east-1a", "nodes": {"desired": 2}}]}
    if network is not None:
        doc["network"] = network
    return doc


def test_a_private_endpoint_without_a_deployer_path_is_refused_naming_the_key():
    (p,) = problems(eks_doc())
    assert p.path == "efa-infra:eks.deployer" and "private only" in p.message and "runsOn" in p.message
    (p,) = problems(eks_doc(deployer={"runsOn": "r"}))
    assert p.path == "efa-infra:eks.deployer" and "give cidrs or securityGroupIds" in p.message


@pytest.mark.parametrize("stack", EKS_STACKS)
def test_each_example_with_a_private_endpoint_and_no_deployer_path_is_refused(stack):
    settings = stack_settings(stack)
    settings["efa-infra:eks"] = {k: v for k, v in settings["efa-infra:eks"].items() if k not in ("publicAccessCidrs", "deployer")}
    (p,) = problems(config.document_from_settings(settings))
    assert p.path == "efa-infra:eks.deployer" and "the API endpoint is private only" in p.message
    run = mocks.run(settings, stack)  # and nothing is registered
    assert run.resources == [] and "efa-infra:eks.deployer" in run.error


def test_a_public_endpoint_that_leaves_out_the_deployer_is_refused_naming_the_key():
    (p,) = problems(eks_doc(publicAccessCidrs=["203.0.113.0/28"], deployer={"runsOn": "r", "cidrs": ["198.51.100.10/32"]}))
    assert p.path == "efa-infra:eks.publicAccessCidrs" and "198.51.100.10/32" in p.message
    assert config.load(eks_doc(publicAccessCidrs=["198.51.100.0/24"], deployer={"runsOn": "r", "cidrs": ["198.51.100.10/32"]}))


def test_nothing_inside_a_vpc_the_stack_creates_can_deploy_it():
    found = problems(eks_doc(publicAccessCidrs=["203.0.113.0/28"],
                             deployer={"runsOn": "r", "securityGroupIds": ["sg-0123456789abcdef0"], "cidrs": ["10.0.4.0/24"]}))
    assert {p.path for p in found} == {"efa-infra:eks.deployer.securityGroupIds", "efa-infra:eks.deployer.cidrs[0]"}
    assert all("the stack creates the VPC" in p.message and "network.existing" in p.message for p in found)


def test_a_joined_cluster_says_only_where_pulumi_up_runs():
    doc = eks_doc(existing={"clusterName": "shared"}, deployer={"runsOn": "r", "cidrs": ["10.0.0.0/24"]})
    assert [p.path for p in problems(doc)] == ["efa-infra:eks.deployer.cidrs"]
    cfg = config.load(eks_doc(existing={"clusterName": "shared"}, deployer={"runsOn": "runner-near-shared"}))
    assert deployer.runs_on(cfg) == "runner-near-shared" and deployer.sources(cfg) == []
    assert [p.path for p in problems({**eks_doc(deployer={"runsOn": "r"}), "eks": {"deployer": {"runsOn": "r"}}})] == [
        "efa-infra:eks.deployer"]  # no cluster at all


def test_in_an_existing_vpc_the_private_endpoint_admits_the_deployer_by_a_rule_of_ours():
    settings = settings_of(eks_doc(SHARED_VPC, deployer={"runsOn": "runner-in-vpc", "securityGroupIds": ["sg-0123456789abcdef0"],
                                                         "cidrs": ["10.99.0.0/24"]}))
    run = mocks.run(settings, "t")
    assert run.error is None, run.error
    rules = {r.name: r.inputs for r in run.of_type(flows.INGRESS) if r.name.startswith("eks-deployer-")}
    assert rules == {
        "eks-deployer-sg-0123456789abcdef0": {"securityGroupId": "<eks-cluster.vpcConfig.clusterSecurityGroupId>", "ipProtocol": "tcp",
                                              "fromPort": 443, "toPort": 443, "referencedSecurityGroupId": "sg-0123456789abcdef0",
                                              "description": "pulumi up to the API server (efa-infra eks.deployer)", "tags": rules["eks-deployer-sg-0123456789abcdef0"]["tags"]},
        "eks-deployer-10.99.0.0-24": {"securityGroupId": "<eks-cluster.vpcConfig.clusterSecurityGroupId>", "ipProtocol": "tcp",
                                      "fromPort": 443, "toPort": 443, "cidrIpv4": "10.99.0.0/24",
                                      "description": "pulumi up to the API server (efa-infra eks.deployer)", "tags": rules["eks-deployer-10.99.0.0-24"]["tags"]},
    }
    verdicts = deployer_verdicts(settings, "t", run.resources)
    assert {name: (v.allowed, v.need.receiver, v.ingress.source) for name, v in verdicts.items()} == {
        "deployer (sg-0123456789abcdef0)": (True, "control plane", "eks-deployer-sg-0123456789abcdef0"),
        "deployer (10.99.0.0/24)": (True, "control plane", "eks-deployer-10.99.0.0-24")}
    # Without our rules, EKS's cluster group admits only itself: the same model blocks the deployer.
    without = [r for r in run.resources if not r.name.startswith("eks-deployer-")]
    assert not any(v.allowed for v in deployer_verdicts(settings, "t", without).values())


def test_the_public_endpoint_admits_the_deployer_only_from_its_listed_cidrs():
    settings = stack_settings("prod")
    run = mocks.run(settings, "prod")
    assert run.error is None, run.error
    (v,) = deployer_verdicts(settings, "prod", run.resources).values()
    assert v.allowed and v.need.receiver == "API server (public endpoint)"
    narrowed = copy.deepcopy(run.resources)
    cluster = next(r for r in narrowed if r.type == flows.CLUSTER)
    cluster.inputs["publicAccessCidrs"] = ["192.0.2.0/24"]
    (v,) = deployer_verdicts(settings, "prod", narrowed).values()
    assert not v.allowed and v.ingress is None


# --- the pipelines ------------------------------------------------------------------------


def workflow() -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / "infra.yml").read_text())


def test_the_workflow_deploys_each_stack_from_the_runner_its_config_names(tmp_path):
    jobs = workflow()["jobs"]
    for job in ("preview", "up"):
        assert jobs[job]["runs-on"] == "${{ matrix.runsOn }}"
        assert jobs[job]["strategy"]["matrix"] == {"include": "${{ fromJSON(needs.check.outputs.deploys) }}"}
    assert jobs["check"]["outputs"]["deploys"] == "${{ steps.plan.outputs.deploys }}"
    # Run the plan step as the workflow does, in a copy of the checkout, and read the matrix it writes.
    (step,) = [s for s in jobs["check"]["steps"] if s.get("id") == "plan"]
    for name in ("components", "stacks", "venv", "Pulumi.yaml", "__main__.py"):
        (tmp_path / name).symlink_to(ROOT / name)
    output = tmp_path / "github-output"
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", step["run"]], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "GITHUB_OUTPUT": str(output)}, timeout=900)
    assert done.returncode == 0, done.stderr
    key, value = output.read_text().strip().split("=", 1)
    deploys = {d["stack"]: d["runsOn"] for d in json.loads(value)}
    assert key == "deploys" and set(deploys) == set(STACKS)
    for stack in STACKS:
        cfg = config.load_file(ROOT / "stacks" / f"Pulumi.{stack}.yaml")
        if stack in EKS_STACKS:
            # The runner the job takes is the one whose addresses the stack's own flows admit.
            assert deploys[stack] == cfg.eks.deployer.runs_on
            plan = json.loads((tmp_path / f"plan-{stack}.json").read_text())
            assert all(f["allowed"] for f in plan["flows"] if f["flow"] == NEED)
        else:
            assert deploys[stack] == deployer.HOSTED_RUNNER


def pipeline_copy(tmp_path):
    """The repository's tracked files in a scratch tree whose venv and pulumi are stand-ins: its installs do nothing,
    its python is the suite's, and pulumi records its calls."""
    tree = tmp_path / "tree"
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes((ROOT / name).read_bytes())
    (tree / "scripts" / "pipeline.sh").chmod(0o755)
    stand_in = tmp_path / "bin"
    for where, name, body in ((tree / "venv" / "bin", "python", f'exec {sys.executable} "$@"'),
                              (tree / "venv" / "bin", "pip", "exit 0"),
                              (stand_in, "python3", "exit 0"),  # `python3 -m venv venv`: the venv above stays
                              (stand_in, "pulumi", f'echo "$*" >> {tmp_path / "pulumi.log"}')):
        where.mkdir(parents=True, exist_ok=True)
        (where / name).write_text(f"#!/bin/sh\n{body}\n")
        (where / name).chmod(0o755)
    return tree, {**os.environ, "PATH": f"{stand_in}:{os.environ['PATH']}"}


def test_pipeline_sh_names_the_runner_and_refuses_to_deploy_elsewhere(tmp_path):
    tree, env = pipeline_copy(tmp_path)
    script = tree / "scripts" / "pipeline.sh"
    where = subprocess.run([str(script), "where", "prod"], env=env, capture_output=True, text=True, timeout=300)
    assert where.returncode == 0 and where.stdout.strip() == "efa-infra-prod", where.stderr
    # Another runner: refused before anything reaches the Pulumi backend or AWS.
    elsewhere = subprocess.run([str(script), "up", "prod"], env={**env, "RUNNER_LABEL": "ubuntu-latest"},
                               capture_output=True, text=True, timeout=300)
    assert elsewhere.returncode == 2 and "stack prod deploys from efa-infra-prod" in elsewhere.stderr
    assert not (tmp_path / "pulumi.log").exists()
    # Its own runner: the stack is selected and brought up with the policy pack.
    there = subprocess.run([str(script), "up", "prod"], env={**env, "RUNNER_LABEL": "efa-infra-prod"},
                           capture_output=True, text=True, timeout=300)
    assert there.returncode == 0, there.stderr
    calls = (tmp_path / "pulumi.log").read_text().splitlines()
    assert calls[0].startswith("stack select --create prod") and calls[1].startswith("up --stack prod --policy-pack policy")