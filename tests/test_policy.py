"""The policy pack (policy/) and the pipeline templates.

Every policy is fed what the real program registers for each example stack
(resource policies per resource, stack policies once with everything) and
must stay silent; then each is shown a broken variant and must report it
under its own name. Policies are called directly: constructing the
PolicyPack starts a gRPC server, so only the pack smoke test does that, in a
child process it stops.
"""

from __future__ import annotations

import copy
import os
import subprocess

import pytest
import yaml
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

from components.offline import mocks
from conftest import ROOT, STACKS, base_doc, register, settings_of, stack_settings
from policy.policies import (
    AUTOSCALING_GROUP,
    EKS_CLUSTER,
    EKS_COMPONENT,
    INGRESS_RULE,
    LAUNCH_TEMPLATE,
    LEGACY_RULE,
    NODE_GROUP,
    POLICIES,
    SECURITY_GROUP,
)

EXAMPLES = ("dev", "p5-ec2", "prod")  # the broken variants start from these
LAYOUT, PLACEMENT, PUBLIC_IP = "efa-launch-template-layout", "efa-nodes-one-az-placement-group", "efa-no-public-ip"
IMDS, EBS, EFA_SG, EKS_PROD = "launch-template-imdsv2", "launch-template-ebs-encrypted", "efa-security-group-self-referencing", "eks-endpoint-not-public-in-prod"


@pytest.fixture(scope="module")
def stacks() -> dict[str, list[mocks.Registered]]:
    return {name: register(stack_settings(name), name) for name in STACKS}


def opts(parent_urn: str | None) -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], parent_urn)


def as_stack(resources) -> list[PolicyResource]:
    return [PolicyResource(r.type, r.inputs, r.urn, r.name, opts(r.parent_urn), None, None, [], {}) for r in resources]


def violations(resources, configs: dict | None = None, stack: list[PolicyResource] | None = None) -> list[tuple[str, str]]:
    """(policy name, message) of every report: resource policies see each resource, stack
    policies all of them (`stack`: the engine's view, default the registered inputs);
    `configs` by policy name, each handed to its policy as the engine does."""
    stack = as_stack(resources) if stack is None else stack
    found: list[tuple[str, str]] = []
    for policy in POLICIES:
        def report(message, urn=None, name=policy.name):
            found.append((name, message))

        policy_config = (configs or {}).get(policy.name, {})
        if isinstance(policy, StackValidationPolicy):
            policy.validate(StackValidationArgs(stack, policy_config), report)
        else:
            for r in stack:
                policy.validate(ResourceValidationArgs(r.resource_type, r.props, r.urn, r.name, r.opts, None, policy_config), report)
    return found


def fired(found) -> set[str]:
    return {name for name, _ in found}


def messages(found, policy: str) -> str:
    return "\n".join(m for name, m in found if name == policy)


def one(resources, typ: str, name: str | None = None) -> mocks.Registered:
    (found,) = [r for r in resources if r.type == typ and (name is None or r.name == name)]
    return found


def variant(stacks, name: str) -> list[mocks.Registered]:
    return copy.deepcopy(stacks[name])


def fleet_doc(**fleet) -> dict:
    return base_doc(fleets=[{**base_doc()["fleets"][0], **fleet}])


# --- the pack -------------------------------------------------------------------


def test_policies_are_named_described_and_mandatory():
    assert [p.name for p in POLICIES] == [LAYOUT, PLACEMENT, PUBLIC_IP, IMDS, EBS, EFA_SG, EKS_PROD]
    for p in POLICIES:
        assert p.enforcement_level is EnforcementLevel.MANDATORY, p.name
        assert len(p.description) > 40, p.name


def test_pulumi_policy_yaml_runs_the_pack_in_the_projects_venv():
    doc = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text())
    assert doc["runtime"]["name"] == "python"
    assert (ROOT / "policy" / doc["runtime"]["options"]["virtualenv"]).resolve() == ROOT / "venv"


# --- the example stacks pass ----------------------------------------------------


def as_pipelines_run(name: str) -> dict:
    """The policy config the pipelines pass: the stack name is its environment."""
    return {EKS_PROD: {"environment": name}}


@pytest.mark.parametrize("name", STACKS)
def test_every_stack_passes_every_policy(stacks, name):
    resources = stacks[name]
    if name in EXAMPLES:  # not vacuous: these have what the policies look at
        assert one(resources, LAUNCH_TEMPLATE)
        assert [r for r in resources if r.type in (AUTOSCALING_GROUP, NODE_GROUP)]
    assert violations(resources, as_pipelines_run(name)) == []


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_stack_passes_without_policy_config(stacks, name):
    assert violations(stacks[name]) == []


# --- 1. EFA layout ----------------------------------------------------------------


def test_layout_fires_on_a_p5_template_missing_one_efa_device(stacks):
    resources = variant(stacks, "p5-ec2")
    one(resources, LAUNCH_TEMPLATE).inputs["networkInterfaces"].pop()
    found = violations(resources)
    assert fired(found) == {LAYOUT}
    assert "31 EFA devices attached; p5.48xlarge has 32" in messages(found, LAYOUT)


def test_layout_fires_on_an_interface_on_card_40(stacks):
    resources = variant(stacks, "p5-ec2")
    one(resources, LAUNCH_TEMPLATE).inputs["networkInterfaces"][-1]["networkCardIndex"] = 40.0
    found = violations(resources)
    assert fired(found) == {LAYOUT}
    assert "p5.48xlarge has no network card 40 (cards 0-31)" in messages(found, LAYOUT)


def test_layout_fires_on_efa_on_p6_b300_card_0():
    resources = register(settings_of(fleet_doc(instanceType="p6-b300.48xlarge")), "b300")
    assert violations(resources) == []
    one(resources, LAUNCH_TEMPLATE).inputs["networkInterfaces"][0]["interfaceType"] = "efa"
    found = violations(resources)
    assert fired(found) == {LAYOUT}
    assert "card 0 of p6-b300.48xlarge accepts interface" in messages(found, LAYOUT)


def test_layout_fires_on_more_interfaces_than_a_card_takes(stacks):
    resources = variant(stacks, "p5-ec2")
    interfaces = one(resources, LAUNCH_TEMPLATE).inputs["networkInterfaces"]
    interfaces.append({**interfaces[0], "deviceIndex": 2.0})  # card 0 of a p5 takes 2
    found = violations(resources)
    assert fired(found) == {LAYOUT}
    assert "takes device indexes below 2" in messages(found, LAYOUT)
    assert "card 0 of p5.48xlarge holds 3 interfaces; its limit is 2" in messages(found, LAYOUT)


def test_layout_fires_on_two_interfaces_at_one_position(stacks):
    resources = variant(stacks, "dev")
    interfaces = one(resources, LAUNCH_TEMPLATE).inputs["networkInterfaces"]
    interfaces[1] = {**interfaces[1], "deviceIndex": 0.0}
    assert "another interface already sits at card 0, device 0" in messages(violations(resources), LAYOUT)


def test_layout_skips_a_type_the_catalog_lacks(stacks):
    resources = variant(stacks, "p5-ec2")
    lt = one(resources, LAUNCH_TEMPLATE)
    lt.inputs["instanceType"] = "x99.custom"
    lt.inputs["networkInterfaces"][-1]["networkCardIndex"] = 40.0
    assert LAYOUT not in fired(violations(resources))


def test_a_fleet_without_efa_on_an_efa_type_passes_every_policy():
    resources = register(settings_of(fleet_doc(efa=False)), "no-efa")
    assert one(resources, LAUNCH_TEMPLATE).inputs["instanceType"] == "g6.8xlarge"
    assert violations(resources) == []


# --- 2. one AZ and a placement group -----------------------------------------------


def test_placement_fires_on_an_auto_scaling_group_with_two_subnets(stacks):
    resources = variant(stacks, "dev")
    one(resources, AUTOSCALING_GROUP).inputs["vpcZoneIdentifiers"].append("<efa-private-us-east-1b.id>")
    found = violations(resources)
    assert fired(found) == {PLACEMENT}
    assert "gpu-asg launches EFA nodes from gpu-lt into 2 subnets" in messages(found, PLACEMENT)


def test_placement_fires_on_an_eks_node_group_with_two_subnets(stacks):
    resources = variant(stacks, "prod")
    one(resources, NODE_GROUP, "p5-nodes").inputs["subnetIds"].append("<efa-private-us-east-1b.id>")
    found = violations(resources)
    assert fired(found) == {PLACEMENT}
    assert "p5-nodes launches EFA nodes from p5-lt into 2 subnets" in messages(found, PLACEMENT)


def test_placement_fires_on_a_template_without_group_or_reservation():
    resources = register(settings_of(fleet_doc(placement={"mode": "none"})), "no-pg")
    found = violations(resources)
    assert fired(found) == {PLACEMENT}
    assert "launch template gpu-lt: EFA nodes need a cluster placement group" in messages(found, PLACEMENT)


def test_placement_accepts_a_capacity_reservation_instead_of_a_group():
    resources = register(settings_of(fleet_doc(capacity={"type": "reservation", "reservationId": "cr-0123456789abcdef0"})), "cr")
    assert "placement" not in one(resources, LAUNCH_TEMPLATE).inputs
    assert violations(resources) == []


# --- 3-5. launch template hygiene -----------------------------------------------------


@pytest.mark.parametrize("value", ["true", True])
def test_public_ip_fires_on_an_efa_interface_asking_for_one(stacks, value):
    resources = variant(stacks, "p5-ec2")
    one(resources, LAUNCH_TEMPLATE).inputs["networkInterfaces"][5]["associatePublicIpAddress"] = value
    found = violations(resources)
    assert fired(found) == {PUBLIC_IP}
    assert "networkInterfaces[5] asks for a public IP address" in messages(found, PUBLIC_IP)


@pytest.mark.parametrize("metadata", [{"httpTokens": "optional"}, None])
def test_imdsv2_fires_unless_tokens_are_required(stacks, metadata):
    resources = variant(stacks, "dev")
    lt = one(resources, LAUNCH_TEMPLATE)
    if metadata is None:
        del lt.inputs["metadataOptions"]
    else:
        lt.inputs["metadataOptions"].update(metadata)
    assert fired(violations(resources)) == {IMDS}


@pytest.mark.parametrize("encrypted", ["false", False, None])
def test_ebs_fires_on_an_unencrypted_volume(stacks, encrypted):
    resources = variant(stacks, "prod")
    ebs = one(resources, LAUNCH_TEMPLATE).inputs["blockDeviceMappings"][0]["ebs"]
    if encrypted is None:
        del ebs["encrypted"]
    else:
        ebs["encrypted"] = encrypted
    found = violations(resources)
    assert fired(found) == {EBS}
    assert "EBS volume /dev/xvda is not encrypted" in messages(found, EBS)


# --- 6. the EFA security group -----------------------------------------------------------


def world_ingress(kind: str, efa_group: mocks.Registered) -> mocks.Registered:
    """An ingress from anywhere onto the EFA group, written in each way pulumi-aws allows."""
    group_id = f"<{efa_group.name}.id>"
    rules = {
        "vpc-ipv4": (INGRESS_RULE, {"securityGroupId": group_id, "ipProtocol": "tcp", "fromPort": 22.0, "toPort": 22.0, "cidrIpv4": "0.0.0.0/0"}),
        "vpc-ipv6": (INGRESS_RULE, {"securityGroupId": group_id, "ipProtocol": "-1", "cidrIpv6": "::/0"}),
        "legacy": (LEGACY_RULE, {"securityGroupId": group_id, "type": "ingress", "protocol": "tcp", "fromPort": 22.0, "toPort": 22.0, "cidrBlocks": ["0.0.0.0/0"]}),
    }
    typ, inputs = rules[kind]
    return mocks.Registered(typ, "ssh-from-anywhere", efa_group.urn + "-ssh", efa_group.parent, efa_group.parent_urn, True, inputs)


@pytest.mark.parametrize("kind", ["vpc-ipv4", "vpc-ipv6", "legacy"])
def test_security_group_fires_on_ingress_from_the_world(stacks, kind):
    resources = variant(stacks, "p5-ec2")
    resources.append(world_ingress(kind, one(resources, SECURITY_GROUP, "efa-efa")))
    found = violations(resources)
    assert fired(found) == {EFA_SG}
    assert "ssh-from-anywhere opens security group efa-efa on EFA launch template p5-lt to the world" in messages(found, EFA_SG)


def test_security_group_fires_on_inline_ingress_from_the_world(stacks):
    resources = variant(stacks, "dev")
    one(resources, SECURITY_GROUP, "efa-efa").inputs["ingress"] = [{"protocol": "-1", "fromPort": 0.0, "toPort": 0.0, "cidrBlocks": ["0.0.0.0/0"]}]
    found = violations(resources)
    assert fired(found) == {EFA_SG}
    assert "security group efa-efa on EFA launch template gpu-lt takes ingress from the world" in messages(found, EFA_SG)


def test_security_group_leaves_other_groups_alone(stacks):
    resources = variant(stacks, "p5-ec2")
    resources.append(world_ingress("vpc-ipv4", one(resources, SECURITY_GROUP, "efa-endpoints")))
    assert violations(resources) == []


@pytest.mark.parametrize("rule", ["efa-efa-in-self", "efa-efa-out-self"])
def test_security_group_fires_without_a_self_referencing_rule(stacks, rule):
    resources = [r for r in variant(stacks, "prod") if r.name != rule]
    found = violations(resources)
    assert fired(found) == {EFA_SG}
    assert "launch template p5-lt: none of its interfaces' security groups (efa-efa) allows all traffic" in messages(found, EFA_SG)


def test_security_group_fires_on_a_self_rule_for_one_protocol_only(stacks):
    resources = variant(stacks, "dev")
    one(resources, INGRESS_RULE, "efa-efa-in-self").inputs["ipProtocol"] = "tcp"
    assert fired(violations(resources)) == {EFA_SG}


# --- 2 and 6 as the engine shows the stack -----------------------------------------------


def engine_view(resources, deployed: bool) -> list[PolicyResource]:
    """The stack as the engine hands it to stack policies. In a first preview what AWS
    assigns is unknown (reading it raises) and the property dependencies name the resource
    each value comes from; once deployed, every resource has its `id` and references hold it."""
    def sources(value) -> list[str]:
        if mocks.is_placeholder(value):
            return [value[1:-1].rsplit(".", 1)[0]]
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
        return [name for v in items for name in sources(v)]

    def resolve(value):
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if mocks.is_placeholder(value):
            name, attr = value[1:-1].rsplit(".", 1)
            return f"{attr}-of-{name}" if deployed else UNKNOWN_STRING_VALUE
        return value

    view = {}
    for r in resources:
        props = resolve(r.inputs) | ({"id": f"id-of-{r.name}"} if deployed else {})
        view[r.name] = PolicyResource(r.type, unknown_checking_proxy(props), r.urn, r.name, opts(r.parent_urn), None, None, [], {})
    if not deployed:
        for r in resources:
            for prop, value in r.inputs.items():
                deps = [view[name] for name in sources(value) if name in view]
                if deps:
                    view[r.name].property_dependencies[prop] = deps
    return list(view.values())


@pytest.mark.parametrize("deployed", [False, True], ids=["first-preview", "deployed"])
@pytest.mark.parametrize("name", STACKS)
def test_every_stack_passes_as_the_engine_shows_it(stacks, name, deployed):
    assert violations(stacks[name], as_pipelines_run(name), stack=engine_view(stacks[name], deployed)) == []


@pytest.mark.parametrize("deployed", [False, True], ids=["first-preview", "deployed"])
def test_stack_policies_find_references_as_the_engine_shows_them(stacks, deployed):
    resources = variant(stacks, "p5-ec2")
    one(resources, AUTOSCALING_GROUP).inputs["vpcZoneIdentifiers"].append("<efa-private-us-east-1b.id>")
    resources.append(world_ingress("vpc-ipv4", one(resources, SECURITY_GROUP, "efa-efa")))
    found = violations(resources, stack=engine_view(resources, deployed))
    assert "p5-asg launches EFA nodes from p5-lt into 2 subnets" in messages(found, PLACEMENT)
    assert "ssh-from-anywhere opens security group efa-efa" in messages(found, EFA_SG)


# --- 7. the EKS endpoint in prod ------------------------------------------------------------


def prod_with_public_endpoint(cidrs: list[str]) -> list[mocks.Registered]:
    settings = stack_settings("prod")
    eks = settings["efa-infra:eks"]
    # The deployer's runner stays among the CIDRs the endpoint admits (eks.deployer).
    runner = [c if c != "0.0.0.0/0" else eks["deployer"]["cidrs"][0] for c in cidrs]
    settings["efa-infra:eks"] = {**eks, "publicAccessCidrs": cidrs, "deployer": {**eks["deployer"], "cidrs": runner}}
    return register(settings, "prod")


def test_eks_endpoint_fires_in_prod_when_public_to_the_world():
    resources = prod_with_public_endpoint(["0.0.0.0/0"])
    cluster = one(resources, EKS_COMPONENT).inputs
    assert (cluster["endpointPublicAccess"], cluster["publicAccessCidrs"]) == (True, ["0.0.0.0/0"])
    for configs in (None, {EKS_PROD: {"environment": "prod"}}):
        found = violations(resources, configs)
        assert fired(found) == {EKS_PROD}
        assert "the API endpoint is public to 0.0.0.0/0" in messages(found, EKS_PROD)
    assert violations(resources, {EKS_PROD: {"environment": "dev"}}) == []


def test_eks_endpoint_accepts_listed_cidrs_in_prod():
    assert violations(prod_with_public_endpoint(["203.0.113.0/24"])) == []


def test_the_prod_stacks_path_for_its_deployer_passes_the_endpoint_rule():
    """prod reaches its API server through the public endpoint limited to its runner's address (eks.deployer):
    the one path a first `pulumi up` of a VPC the stack creates has, and one the rule accepts."""
    resources = register(stack_settings("prod"), "prod")
    cluster = one(resources, EKS_COMPONENT).inputs
    assert cluster["endpointPublicAccess"] is True and "0.0.0.0/0" not in cluster["publicAccessCidrs"]
    assert violations(resources) == []


def test_eks_endpoint_fires_on_eks_defaults_and_on_the_aws_cluster(stacks):
    resources = variant(stacks, "prod")
    cluster = one(resources, EKS_COMPONENT)
    del cluster.inputs["endpointPublicAccess"]  # pulumi-eks's default: public, to 0.0.0.0/0
    del cluster.inputs["publicAccessCidrs"]
    assert "public to the world (no publicAccessCidrs)" in messages(violations(resources), EKS_PROD)

    aws_cluster = mocks.Registered(EKS_CLUSTER, "raw", cluster.urn + "-raw", None, None, True,
                                     {"vpcConfig": {"endpointPublicAccess": "true", "publicAccessCidrs": ["0.0.0.0/0"]}})
    assert fired(violations([aws_cluster])) == {EKS_PROD}


# --- the pipeline templates ----------------------------------------------------------------


def workflow() -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / "infra.yml").read_text())


def steps_of(job: dict) -> tuple[str, list[dict]]:
    """All `run` text of a job, and its `uses` steps."""
    return "\n".join(s.get("run", "") for s in job["steps"]), [s for s in job["steps"] if "uses" in s]


def action(uses: list[dict], name: str) -> dict:
    (step,) = [s for s in uses if s["uses"].split("@")[0] == name]
    return step.get("with", {})


def test_workflow_checks_every_pull_request_without_credentials():
    doc = workflow()
    triggers = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers and triggers["push"]["branches"] == ["main"]
    run, uses = steps_of(doc["jobs"]["check"])
    assert action(uses, "actions/setup-python")["python-version"] == "3.11"
    for command in (
        "python3 -m venv venv && venv/bin/pip install -r requirements-test.txt",
        "venv/bin/python -m components validate",
        "for f in stacks/Pulumi.*.yaml",
        'venv/bin/python -m components plan --config "$f" --json > "plan-$name.json"',
        "venv/bin/python -m pytest -q",
    ):
        assert command in run, command
    assert "plan-*.json" in action(uses, "actions/upload-artifact")["path"].split()


def test_workflow_previews_with_the_policy_pack_where_credentials_exist():
    job = workflow()["jobs"]["preview"]
    assert "vars.AWS_ROLE_ARN != ''" in job["if"] and "pull_request" in job["if"]
    assert job["permissions"]["id-token"] == "write"
    assert "needs.check.outputs.deploys" in job["strategy"]["matrix"]["include"]  # each stack with its runner
    _, uses = steps_of(job)
    assert "vars.AWS_ROLE_ARN" in action(uses, "aws-actions/configure-aws-credentials")["role-to-assume"]
    pulumi = action(uses, "pulumi/actions")
    assert (pulumi["command"], pulumi["policyPacks"]) == ("preview", "policy")
    assert "matrix.stack" in pulumi["stack-name"] and pulumi["policyPackConfigs"]


def test_workflow_deploys_main_per_stack_behind_an_environment():
    job = workflow()["jobs"]["up"]
    assert "push" in job["if"] and "refs/heads/main" in job["if"]
    assert job["environment"] == "${{ matrix.stack }}" and job["needs"] == "check"
    assert job["permissions"]["id-token"] == "write"
    _, uses = steps_of(job)
    assert "vars.AWS_ROLE_ARN" in action(uses, "aws-actions/configure-aws-credentials")["role-to-assume"]
    pulumi = action(uses, "pulumi/actions")
    assert (pulumi["command"], pulumi["policyPacks"]) == ("up", "policy")


PIPELINE = ROOT / "scripts" / "pipeline.sh"


def pipeline(*args: str) -> subprocess.CompletedProcess:
    # Whatever this machine has installed, the script must not find a pulumi CLI.
    path = [d for d in os.environ["PATH"].split(os.pathsep) if not os.path.exists(os.path.join(d, "pulumi"))]
    env = {**os.environ, "PATH": os.pathsep.join(path)}
    return subprocess.run(["bash", str(PIPELINE), *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)


def test_pipeline_script_parses_and_is_executable():
    assert subprocess.run(["bash", "-n", str(PIPELINE)], capture_output=True).returncode == 0
    assert os.access(PIPELINE, os.X_OK)
    text = PIPELINE.read_text()
    for command in ("-m components validate", "-m components plan --config", "-m pytest -q", "--policy-pack policy", "pulumi preview", "pulumi up"):
        assert command in text, command


@pytest.mark.parametrize("args", [(), ("deploy",), ("preview",), ("up", "a", "b")])
def test_pipeline_script_without_a_valid_command_prints_usage(args):
    result = pipeline(*args)
    assert result.returncode != 0
    assert "usage: scripts/pipeline.sh check" in result.stderr


def test_pipeline_script_names_a_missing_stack_and_a_missing_cli():
    result = pipeline("preview", "nope")
    assert result.returncode != 0 and "no stack file stacks/Pulumi.nope.yaml" in result.stderr and "dev" in result.stderr
    result = pipeline("up", "dev")
    assert result.returncode != 0 and "the pulumi CLI is not on PATH" in result.stderr
