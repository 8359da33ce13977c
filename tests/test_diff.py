"""`python -m components diff`: each outcome, the exit code, and the replace facts against the provider."""

from __future__ import annotations

import copy
import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pulumi_aws as aws
import pytest
import yaml

from components.planning import config
from components.offline import diff, mocks
from conftest import ROOT, base_doc, settings_of

PROD = ROOT / "stacks" / "Pulumi.prod.yaml"


def changes_between(before: dict, after: dict, stack: str = "t") -> list[diff.Change]:
    runs = []
    for doc in (before, after):
        run = mocks.run(settings_of(doc), stack)
        assert run.error is None, run.error
        runs.append(run.resources)
    return diff.compare(*runs)


def by_name(changes) -> dict[tuple[str, str], diff.Change]:
    return {(c.type, c.name): c for c in changes}


# --- outcomes -------------------------------------------------------------------


def test_create_and_delete():
    with_job = base_doc(jobs=[{"name": "train", "fleet": "gpu", "launcher": "torchrun", "command": ["train.py"]}])
    created = by_name(changes_between(base_doc(), with_job))
    assert {k: c.action for k, c in created.items()} == {("efa-infra:index:Job", "train"): "create",
                                                        ("aws:ssm/document:Document", "train-launch"): "create"}
    deleted = by_name(changes_between(with_job, base_doc()))
    assert {c.action for c in deleted.values()} == {"delete"} and deleted.keys() == created.keys()


def test_update_in_place_names_the_inputs():
    bigger = copy.deepcopy(base_doc())
    bigger["fleets"][0]["rootVolumeGiB"] = 400
    changes = by_name(changes_between(base_doc(), bigger))
    lt = changes[("aws:ec2/launchTemplate:LaunchTemplate", "gpu-lt")]
    assert (lt.action, lt.changed, lt.because) == ("update", ["blockDeviceMappings.ebs.volumeSize"], [])
    # A new template version: the Auto Scaling group launching from it follows, in place.
    asg = changes[("aws:autoscaling/group:Group", "gpu-asg")]
    assert (asg.action, asg.changed) == ("update", ["launchTemplate.version"])
    assert len(changes) == 2


def test_replace_names_the_forcing_inputs_and_what_follows_from_it():
    moved = base_doc(network={"vpcCidr": "10.1.0.0/16"})
    changes = by_name(changes_between(base_doc(), moved))
    vpc = changes[("aws:ec2/vpc:Vpc", "efa-vpc")]
    assert (vpc.action, vpc.because) == ("replace", ["cidrBlock"])
    subnet = changes[("aws:ec2/subnet:Subnet", "efa-private-us-east-1a")]
    assert subnet.action == "replace" and subnet.because == ["cidrBlock", "vpcId"]
    # The NAT gateway's subnet is new, so is the NAT gateway (subnet_id is ForceNew), and its security group's VPC.
    nat = changes[("aws:ec2/natGateway:NatGateway", "efa-nat-us-east-1a")]
    assert (nat.action, nat.because) == ("replace", ["subnetId"])
    assert changes[("aws:ec2/securityGroup:SecurityGroup", "efa-efa")].because == ["vpcId"]
    # The Auto Scaling group moves subnet in place.
    assert changes[("aws:autoscaling/group:Group", "gpu-asg")].action == "update"
    assert {c.guarded for c in diff.blocked(list(changes.values()))} == {"VPC", "subnet", "NAT gateway"}


def test_a_security_group_rule_whose_source_changes_kind_is_replaced():
    before = diff.Resource("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", "r", "u",
                           {"securityGroupId": "<sg.id>", "cidrIpv4": "10.0.0.0/16", "ipProtocol": "tcp"})
    after = diff.Resource(before.type, "r", "u", {"securityGroupId": "<sg.id>", "referencedSecurityGroupId": "<other.id>", "ipProtocol": "tcp"})
    (change,) = diff.compare([before], [after])
    assert (change.action, change.because) == ("replace", ["cidrIpv4", "referencedSecurityGroupId"])


def test_numbers_compare_as_numbers():
    # Mocks hand numbers over as floats; 4 and 4.0 are the same input.
    a = diff.Resource("aws:autoscaling/group:Group", "g", "u", {"maxSize": 4})
    b = diff.Resource("aws:autoscaling/group:Group", "g", "u", {"maxSize": 4.0})
    assert diff.compare([a], [b]) == []


# --- the CLI ------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "components", "diff", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def changed_prod(tmp_path, change) -> str:
    doc = yaml.safe_load(PROD.read_text())
    change(doc["config"])
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_cli_reports_a_safe_change_and_exits_0(tmp_path):
    path = changed_prod(tmp_path, lambda c: c["efa-infra:fleets"][0]["nodes"].update(max=100))
    result = cli("--config", path, "--base", str(PROD), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [(c["action"], c["name"], c["changedInputs"]) for c in doc["changes"]] == [("update", "p5-nodes", ["scalingConfig.maxSize"])]
    assert doc["blocked"] == [] and doc["summary"]["update"] == 1 and doc["stack"] == "prod"


def test_cli_refuses_replacing_a_protected_kind_unless_allowed(tmp_path):
    path = changed_prod(tmp_path, lambda c: c["efa-infra:network"].update(vpcCidr="10.41.0.0/16"))
    refused = cli("--config", path, "--base", str(PROD))
    assert refused.returncode == 4  # BLOCKED: not 2, a usage error
    assert "+- replace  aws:ec2/vpc:Vpc  efa-vpc  replaced because cidrBlock changed  [protected: VPC]" in refused.stdout
    assert "10 guarded resources would be replaced or deleted: " in refused.stderr
    assert "VPC efa-vpc (replace, under Pulumi protect)" in refused.stderr
    assert "--allow-replace" in refused.stderr
    allowed = cli("--config", path, "--base", str(PROD), "--allow-replace", "--json")
    assert allowed.returncode == 0
    assert json.loads(allowed.stdout)["summary"]["replace"] > 0


def test_cli_base_ref_runs_the_program_and_the_stack_file_of_that_commit(tmp_path):
    """A change to the program shows too: in a throwaway repository whose last commit moves the public
    subnets, the diff against the commit before it replaces them (and their NAT gateway) and exits 4 (blocked)."""
    repo = tmp_path / "repo"
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:  # the working tree as it is, so that the code under test is what runs
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    git = lambda *a: subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *a],  # noqa: E731
                                    capture_output=True, text=True, check=True)
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "base")
    addressing = repo / "components" / "planning" / "addressing.py"
    addressing.write_text(addressing.read_text().replace("PUBLIC_PREFIX = 26", "PUBLIC_PREFIX = 27"))
    git("commit", "-qam", "smaller public subnets")
    result = subprocess.run([sys.executable, "-m", "components", "diff", "--stack", "dev", "--base-ref", "HEAD~1", "--json"],
                            cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 4, result.stderr
    doc = json.loads(result.stdout)
    assert doc["base"] == "stacks/Pulumi.dev.yaml at HEAD~1"
    # dev is not protected: its subnets are guarded by diff, not under Pulumi protect, and said so.
    assert {(c["guardedKind"], c["pulumiProtect"]) for c in doc["blocked"]} == {("subnet", False), ("NAT gateway", False)}
    replaced = {(c["type"], c["name"]): c["replaceBecause"] for c in doc["changes"] if c["action"] == "replace"}
    assert replaced[("aws:ec2/subnet:Subnet", "efa-public-us-east-1a")] == ["cidrBlock"]
    assert replaced[("aws:ec2/natGateway:NatGateway", "efa-nat-us-east-1a")] == ["subnetId"]
    assert ("aws:ec2/subnet:Subnet", "efa-private-us-east-1a") not in replaced
    same = subprocess.run([sys.executable, "-m", "components", "diff", "--stack", "dev", "--base-ref", "HEAD"],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert same.returncode == 0 and "0 to create, 0 to update in place, 0 to replace, 0 to delete" in same.stdout


def test_cli_unknown_ref_and_invalid_config_are_clean_errors(tmp_path):
    unknown = cli("--stack", "dev", "--base-ref", "no-such-ref")
    assert unknown.returncode == 3 and "'no-such-ref' is not a commit" in unknown.stderr and "Traceback" not in unknown.stderr
    path = changed_prod(tmp_path, lambda c: c["efa-infra:fleets"][0]["nodes"].update(max=100000))
    invalid = cli("--config", path, "--base", str(PROD))
    assert invalid.returncode == 1 and "efa-infra:fleets[0].nodes.max" in invalid.stderr and "Traceback" not in invalid.stderr


# --- the facts ------------------------------------------------------------------------


def registered_types() -> set[str]:
    types = set()
    for path in (ROOT / "stacks").glob("Pulumi.*.yaml"):
        s = config.read_stack_file(path)
        types |= {r.type for r in mocks.run(s, path.stem.removeprefix("Pulumi.")).resources}
    secondary = base_doc(network={"secondaryCidr": "100.64.0.0/16", "interfaceEndpoints": ["sts"]})
    return types | {r.type for r in mocks.run(settings_of(secondary), "t").resources}


def test_every_registered_type_has_replace_facts_or_only_groups_resources():
    data = diff.facts()
    grouping = {"efa-infra:index:EfaNetwork", "efa-infra:index:EfaFleet", "efa-infra:index:EfaCluster", "efa-infra:index:Job",
                "efa-infra:index:FsxLustre",
                "kubernetes:kustomize/v2:Directory", "kubernetes:yaml/v2:ConfigFile", "kubernetes:yaml/v2:ConfigGroup"}
    missing = registered_types() - set(data["types"]) - set(data["components"]) - grouping
    assert missing == set()


def test_each_fact_names_its_provider_file_and_commit():
    data = diff.facts()
    assert data["repository"] == "hashicorp/terraform-provider-aws"
    for typ, fact in data["types"].items():
        assert re.fullmatch(r"[0-9a-f]{40}", fact["commit"]), typ
        assert fact["file"].startswith("internal/service/") and fact["file"].endswith(".go"), typ
        assert fact["tfResource"].startswith("aws_"), typ
    for typ, fact in data["components"].items():
        assert fact["basis"], typ


@pytest.mark.parametrize("typ,attributes", [
    ("aws:ec2/subnet:Subnet", {"cidr_block", "availability_zone", "vpc_id"}),
    ("aws:ec2/vpc:Vpc", {"cidr_block"}),
    ("aws:ec2/natGateway:NatGateway", {"subnet_id", "allocation_id"}),
    ("aws:eks/nodeGroup:NodeGroup", {"subnet_ids", "ami_type", "launch_template.id", "instance_types", "node_role_arn"}),
    ("aws:ec2/placementGroup:PlacementGroup", {"strategy", "name"}),
    ("aws:fsx/lustreFileSystem:LustreFileSystem", {"subnet_ids", "deployment_type", "efa_enabled", "security_group_ids"}),
])
def test_the_guarded_kinds_carry_the_provider_force_new_attributes(typ, attributes):
    fact = diff.facts()["types"][typ]
    assert attributes <= set(fact["forceNew"])


def test_what_is_updated_in_place_is_not_marked():
    # From the same provider files: node counts, the launch template version and endpoint subnets are updated in place.
    types = diff.facts()["types"]
    assert not {"scaling_config", "launch_template.version", "labels", "taint"} & set(types["aws:eks/nodeGroup:NodeGroup"]["forceNew"])
    assert "subnet_ids" not in types["aws:ec2/vpcEndpoint:VpcEndpoint"]["forceNew"]
    assert {"max_size", "launch_template", "vpc_zone_identifier"}.isdisjoint(types["aws:autoscaling/group:Group"]["forceNew"])


SDK_ARGS = {typ: cls for typ, cls in {
    "aws:ec2/vpc:Vpc": aws.ec2.VpcArgs, "aws:ec2/subnet:Subnet": aws.ec2.SubnetArgs,
    "aws:ec2/natGateway:NatGateway": aws.ec2.NatGatewayArgs, "aws:eks/nodeGroup:NodeGroup": aws.eks.NodeGroupArgs,
    "aws:ec2/placementGroup:PlacementGroup": aws.ec2.PlacementGroupArgs, "aws:ec2/launchTemplate:LaunchTemplate": aws.ec2.LaunchTemplateArgs,
    "aws:ec2/securityGroup:SecurityGroup": aws.ec2.SecurityGroupArgs, "aws:ec2/eip:Eip": aws.ec2.EipArgs,
    "aws:ec2/vpcEndpoint:VpcEndpoint": aws.ec2.VpcEndpointArgs, "aws:eks/addon:Addon": aws.eks.AddonArgs,
    "aws:ec2/vpcIpv4CidrBlockAssociation:VpcIpv4CidrBlockAssociation": aws.ec2.VpcIpv4CidrBlockAssociationArgs,
}.items()}


@pytest.mark.parametrize("typ", sorted(SDK_ARGS))
def test_force_new_attributes_are_inputs_of_the_pulumi_aws_sdk(typ):
    """pulumi-aws is generated from the same provider schema: each ForceNew attribute is an input it takes,
    under the name the diff compares (camelCase of the attribute)."""
    cls = SDK_ARGS[typ]
    for attribute in diff.facts()["types"][typ]["forceNew"]:
        top = attribute.split(".")[0]
        assert isinstance(getattr(cls, top, None), property), f"{cls.__name__} has no input {top}"
        # The name the SDK sends the provider (its getter's wire name) is the one the diff compares.
        assert diff.camel(top) == getattr(cls, top).fget._pulumi_name


def test_the_sdk_docs_agree_where_they_say_what_forces_a_new_resource():
    # pulumi-aws's SecurityGroup documentation: a name change "forces new" the group, likewise description and vpc_id.
    doc = Path(inspect.getfile(aws.ec2.SecurityGroup)).read_text()
    assert re.search(r'`name` change "forces new" the security group.*Likewise, `description`, `name_prefix`, or `vpc_id`', doc)
    assert {"description", "name", "vpc_id"} <= set(diff.facts()["types"]["aws:ec2/securityGroup:SecurityGroup"]["forceNew"])


# --- the pipelines ------------------------------------------------------------------------


def test_pull_requests_run_diff_on_every_stack_and_fail_on_a_protected_replacement():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "infra.yml").read_text())
    (step,) = [s for s in workflow["jobs"]["check"]["steps"] if "components diff" in s.get("run", "")]
    assert step["if"] == "github.event_name == 'pull_request'"
    assert 'diff --config "$f" --base-ref FETCH_HEAD $ALLOW || status=1' in step["run"] and "exit $status" in step["run"]
    assert "allow-replace" in step["env"]["ALLOW"] and 'git fetch --no-tags --depth=1 origin "$BASE_REF"' in step["run"]
    script = (ROOT / "scripts" / "pipeline.sh").read_text()
    assert '"diff 1") diff_stacks origin/main' in script and '--base-ref "$base" "${allow[@]}" || status=1' in script
