"""The Terraform-plan export: names checked against pulumi-aws's own bridge metadata and SDK,
every example stack exported whole, unknowns and references where the engine gives them."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from functools import lru_cache

import pytest

from components.planning import config
from components.offline import mocks, terraform_plan
from tests.conftest import ROOT

META = json.loads((ROOT / "tests" / "data" / "pulumi-aws-bridge-metadata.json").read_text())
STACKS = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _tables():
    names = terraform_plan.names()
    yield from names["resources"].items()
    yield from names["types"].items()


def test_every_terraform_type_is_the_bridge_metadatas():
    known = {**META["resources"], **META["newerThanExtract"]["resources"]}
    wrong = {t: (spec["terraform"], known.get(t)) for t, spec in terraform_plan.names()["resources"].items()
             if known.get(t) != spec["terraform"]}
    assert not wrong


def test_every_attribute_name_is_the_bridge_metadatas():
    """A property the metadata renames has that name; one it lists nowhere keeps its Pulumi name. Tokens or
    properties the stored extract lacks (listed there) follow the bridge's rule: snake_case of the Pulumi name."""
    renamed = {**{t: {} for t in META["noRenames"]["tokens"]}, **META["renamedProperties"]}
    newer = META["newerThanExtract"]["properties"]
    unchecked = set(META["notExtracted"]["tokens"])
    wrong = []
    for token, spec in _tables():
        for key, entry in spec["attributes"].items():
            tf = entry[0] if isinstance(entry, list) else entry
            if token in renamed and key not in newer.get(token, []):
                expected = renamed[token].get(key, key)
            else:
                assert token in unchecked or key in newer.get(token, []) or token in newer, f"{token} is missing from the extract"
                expected = _snake(key)
            if tf != expected:
                wrong.append((token, key, tf, expected))
    assert not wrong
    assert not unchecked & set(renamed), "a token listed as not extracted has an entry"
    assert not set(META["noRenames"]["tokens"]) & set(META["renamedProperties"])


def _sdk_annotation(token: str, key: str) -> str:
    module, name = token.split(":")[1].split("/")[0], token.split(":")[-1]
    cls = getattr(importlib.import_module(f"pulumi_aws.{module}"), name + "Args")
    for attr in dir(cls):
        prop = getattr(cls, attr)
        if isinstance(prop, property) and getattr(prop.fget, "_pulumi_name", None) == key:
            return str(prop.fget.__annotations__["return"])
    raise AssertionError(f"pulumi-aws {cls.__name__} has no input {key}")


def test_nested_blocks_are_the_sdks_nested_types():
    """An attribute exported as a block is, in the installed pulumi-aws SDK, an input of exactly that nested type;
    every other one is not an object type."""
    for token, spec in _tables():
        for key, entry in spec["attributes"].items():
            ann = _sdk_annotation(token, key)
            if isinstance(entry, list):
                assert f"ForwardRef('{entry[1].split(':')[-1]}Args')" in ann, (token, key, ann)
            else:
                assert "Args')" not in ann or "PolicyDocument" in ann, (token, key, ann)


@lru_cache(maxsize=None)
def exported(stack: str) -> tuple[mocks.Run, dict]:
    run = mocks.run(config.read_stack_file(ROOT / "stacks" / f"Pulumi.{stack}.yaml"), stack)
    assert not run.error
    return run, terraform_plan.export(run.resources, config.load_file(ROOT / "stacks" / f"Pulumi.{stack}.yaml").region, stack)


@pytest.mark.parametrize("stack", STACKS)
def test_every_aws_resource_of_every_stack_is_exported(stack):
    run, plan = exported(stack)
    aws = [r for r in run.resources if r.custom and r.type.startswith("aws:")]
    eks = run.of_type(terraform_plan.EKS_COMPONENT)
    resources = plan["planned_values"]["root_module"]["resources"]
    assert len(resources) == len(aws) + len(eks)
    assert {r["type"] for r in resources} == (
        {terraform_plan.names()["resources"][r.type]["terraform"] for r in aws} | ({"aws_eks_cluster"} if eks else set()))
    assert [c["address"] for c in plan["resource_changes"]] == [r["address"] for r in resources]
    assert len({r["address"] for r in resources}) == len(resources)


def _config(plan: dict, address: str) -> dict:
    return next(r for r in plan["configuration"]["root_module"]["resources"] if r["address"] == address)


def _change(plan: dict, address: str) -> dict:
    return next(r for r in plan["resource_changes"] if r["address"] == address)["change"]


def test_unknown_values_and_references_follow_the_engine():
    run, plan = exported("prod")
    lt = _change(plan, "aws_launch_template.p5-lt")
    assert lt["after"]["metadata_options"][0]["http_tokens"] == "required"  # blocks are lists
    assert lt["after"]["network_interfaces"][0]["security_groups"] == [None, None]
    assert lt["after_unknown"]["network_interfaces"][0]["security_groups"] == [True, True]
    refs = _config(plan, "aws_launch_template.p5-lt")["expressions"]["network_interfaces"][0]["security_groups"]["references"]
    assert "aws_security_group.efa-efa.id" in refs
    assert "aws_eks_cluster.eks-cluster.vpc_config[0].cluster_security_group_id" in refs
    subnet = _config(plan, "aws_subnet.efa-private-us-east-1a")["expressions"]
    assert subnet["vpc_id"] == {"references": ["aws_vpc.efa-vpc.id", "aws_vpc.efa-vpc"]}
    assert subnet["cidr_block"] == {"constant_value": run.one("aws:ec2/subnet:Subnet", "efa-private-us-east-1a").inputs["cidrBlock"]}
    assert "vpc_id" not in _change(plan, "aws_subnet.efa-private-us-east-1a")["after"]


def test_each_reference_comes_from_its_own_inputs_dependencies():
    """Resources of different kinds share names (a subnet and its route table, a flow log's role and log group):
    a placeholder is matched among the dependencies of the input that holds it, not of the whole resource."""
    _, plan = exported("dev")
    refs = lambda address, key: _config(plan, address)["expressions"][key]["references"][0]  # noqa: E731
    association = "aws_route_table_association.efa-private-us-east-1a"
    assert refs(association, "route_table_id") == "aws_route_table.efa-private-us-east-1a.id"
    assert refs(association, "subnet_id") == "aws_subnet.efa-private-us-east-1a.id"
    assert refs("aws_flow_log.efa-flow-logs", "iam_role_arn") == "aws_iam_role.efa-flow-logs.arn"
    assert refs("aws_flow_log.efa-flow-logs", "log_destination") == "aws_cloudwatch_log_group.efa-flow-logs.arn"
    assert refs("aws_iam_role_policy.efa-flow-logs", "role") == "aws_iam_role.efa-flow-logs.id"


def test_the_eks_cluster_is_what_pulumi_eks_creates():
    run, plan = exported("prod")
    cluster = _change(plan, "aws_eks_cluster.eks-cluster")["after"]
    assert cluster["name"] == "prod-eks"
    # Public only to the deployer's runner (eks.deployer), private access on.
    assert cluster["vpc_config"][0]["endpoint_public_access"] is True
    assert cluster["vpc_config"][0]["public_access_cidrs"] == ["198.51.100.10/32"]
    assert "security_group_ids" not in cluster["vpc_config"][0]  # skipDefaultSecurityGroups
    assert cluster["encryption_config"][0]["resources"] == ["secrets"]
    key = _config(plan, "aws_eks_cluster.eks-cluster")["expressions"]["encryption_config"][0]["provider"][0]["key_arn"]
    assert key["references"][0] == "aws_kms_key.eks-secrets.arn"
    assert plan["efa_infra"]["not_shown"].startswith("pulumi-eks also creates")
    assert exported("dev")[1]["efa_infra"]["not_shown"] is None


def test_an_input_without_a_terraform_name_is_refused():
    run, _ = exported("dev")
    vpc = run.one("aws:ec2/vpc:Vpc")
    broken = mocks.Registered(vpc.type, vpc.name, vpc.urn, None, None, True, {**vpc.inputs, "newInput": 1})
    with pytest.raises(terraform_plan.ExportError, match="newInput"):
        terraform_plan.export([broken], "us-east-1", "dev")
    alien = mocks.Registered("aws:sqs/queue:Queue", "q", "urn:q", None, None, True, {})
    with pytest.raises(terraform_plan.ExportError, match="aws:sqs/queue:Queue"):
        terraform_plan.export([alien], "us-east-1", "dev")


def test_cli_writes_terraform_plan_json():
    out = subprocess.run([sys.executable, "-m", "components", "plan", "--stack", "dev", "--format", "terraform-plan"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["format_version"] and plan["terraform_version"]
    assert any(r["type"] == "aws_vpc" for r in plan["planned_values"]["root_module"]["resources"])
