"""The network and EC2 fleets as the program registers them under Pulumi's mocks,
checked against botocore's EC2 model and moto."""

from __future__ import annotations

import copy
import json
import re

import boto3
import botocore.session
import botocore.validate
import moto
import pytest

from components.planning import config, efa
from components.offline import mocks
from conftest import ROOT, base_doc, settings_of

LT = "aws:ec2/launchTemplate:LaunchTemplate"
ASG = "aws:autoscaling/group:Group"
PG = "aws:ec2/placementGroup:PlacementGroup"
SG = "aws:ec2/securityGroup:SecurityGroup"
INGRESS, EGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
SUBNET = "aws:ec2/subnet:Subnet"
EXAMPLES = ["dev", "p5-ec2"]


def run_doc(doc: dict, stack: str = "test") -> mocks.Run:
    run = mocks.run(settings_of(doc), stack)
    assert run.error is None, run.error
    return run


def run_stack(name: str) -> mocks.Run:
    run = mocks.run(config.read_stack_file(ROOT / "stacks" / f"Pulumi.{name}.yaml"), name)
    assert run.error is None, run.error
    return run


def as_ints(value):
    """Mocks hand numbers over as floats."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [as_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: as_ints(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("stack", EXAMPLES)
def test_launch_template_carries_exactly_the_layout(stack):
    run = run_stack(stack)
    cfg = config.load_file(ROOT / "stacks" / f"Pulumi.{stack}.yaml")
    sg_id = f"<{run.one(SG, 'efa-efa').name}.id>"
    for f in cfg.fleets:
        lt = run.one(LT, f"{f.name}-lt")
        interfaces = as_ints(lt.inputs["networkInterfaces"])
        expected = efa.network_interfaces(f.instance_type, f.efa_layout)
        assert [{"NetworkCardIndex": i["networkCardIndex"], "DeviceIndex": i["deviceIndex"], "InterfaceType": i["interfaceType"]}
                for i in interfaces] == expected
        subnet = f"<efa-private-{f.availability_zone}.id>"
        for i in interfaces:
            assert i["securityGroups"] == [sg_id]
            assert i["associatePublicIpAddress"] == "false"
            assert i["subnetId"] == subnet
        assert lt.inputs["metadataOptions"]["httpTokens"] == "required"
        (root,) = lt.inputs["blockDeviceMappings"]
        assert root["ebs"]["encrypted"] == "true" and root["ebs"]["volumeType"] == "gp3"
        assert as_ints(root["ebs"]["volumeSize"]) == f.root_volume_gib
        asg = run.one(ASG, f"{f.name}-asg")
        assert asg.inputs["vpcZoneIdentifiers"] == [subnet]
        assert (asg.inputs["minSize"], asg.inputs["desiredCapacity"], asg.inputs["maxSize"]) == (f.nodes.min, f.nodes.desired, f.nodes.maximum)
        tags = {t["key"]: t["value"] for t in asg.inputs["tags"]}
        assert tags["efa-infra:fleet"] == f.name and tags["efa-infra:stack"] == stack


def test_private_subnets_give_no_public_ips_and_are_sized_from_the_plan():
    run = run_stack("p5-ec2")
    private = run.one(SUBNET, "efa-private-us-east-1a").inputs
    public = run.one(SUBNET, "efa-public-us-east-1a").inputs
    assert private["mapPublicIpOnLaunch"] is False and public["mapPublicIpOnLaunch"] is False  # option: test_secure_defaults
    assert private["cidrBlock"] == "10.30.0.0/19" and private["availabilityZone"] == "us-east-1a"
    vpc = run.one("aws:ec2/vpc:Vpc").inputs
    assert vpc["enableDnsSupport"] and vpc["enableDnsHostnames"]
    services = {r.inputs["serviceName"]: r.inputs["vpcEndpointType"] for r in run.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")}
    assert services["com.amazonaws.us-east-1.s3"] == "Gateway"
    assert services["com.amazonaws.us-east-1.ecr.dkr"] == "Interface"


def test_efa_security_group_is_self_referencing_and_closed_to_the_world():
    run = run_stack("dev")
    sg = "<efa-efa.id>"
    ingress = [r.inputs for r in run.of_type(INGRESS) if r.inputs["securityGroupId"] == sg]
    egress = [r.inputs for r in run.of_type(EGRESS) if r.inputs["securityGroupId"] == sg]
    assert ingress == [{"securityGroupId": sg, "referencedSecurityGroupId": sg, "ipProtocol": "-1",
                        "description": "EFA: all traffic from the group itself"}]
    assert any(e.get("referencedSecurityGroupId") == sg and e["ipProtocol"] == "-1" for e in egress)
    assert any(e.get("cidrIpv4") == "0.0.0.0/0" for e in egress)
    everything = run.of_type(INGRESS)
    assert not any(r.inputs.get("cidrIpv4") == "0.0.0.0/0" for r in everything)


def fleet_doc(**fleet_changes) -> dict:
    doc = base_doc()
    doc["fleets"][0].update(fleet_changes)
    return doc


def test_placement_modes():
    created = run_doc(fleet_doc())
    assert created.one(PG).inputs["strategy"] == "cluster"
    assert created.one(LT).inputs["placement"] == {"groupName": "<gpu-pg.name>"}

    existing = run_doc(fleet_doc(placement={"mode": "existing", "groupName": "team-a-p5"}))
    assert existing.of_type(PG) == []
    assert existing.one(LT).inputs["placement"] == {"groupName": "team-a-p5"}

    reserved = run_doc(fleet_doc(capacity={"type": "capacity-block", "reservationId": "cr-0123456789abcdef0"}))
    assert reserved.of_type(PG) == []
    lt = reserved.one(LT).inputs
    assert "placement" not in lt
    assert lt["instanceMarketOptions"] == {"marketType": "capacity-block"}
    assert lt["capacityReservationSpecification"]["capacityReservationTarget"]["capacityReservationId"] == "cr-0123456789abcdef0"


@pytest.mark.parametrize("itype, parameter", [
    # Neuron's base AMI is published under Neuron's own prefix (Neuron DLAMI User Guide), not /deeplearning/ami.
    ("trn2.48xlarge", "/aws/service/neuron/dlami/base/amazon-linux-2023/latest/image_id"),
    ("trn1.32xlarge", "/aws/service/neuron/dlami/base/amazon-linux-2023/latest/image_id"),
    ("p5.48xlarge", "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"),
    ("c6in.32xlarge", "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"),
])
def test_the_default_ami_is_the_documented_ssm_parameter_of_the_fleets_accelerator(itype, parameter):
    run = run_doc(fleet_doc(instanceType=itype))
    assert run.one(LT).inputs["imageId"] == f"resolve:ssm:{parameter}"


def test_changing_node_counts_changes_only_the_auto_scaling_group():
    small = run_doc(fleet_doc(nodes={"min": 0, "desired": 2, "max": 4}))
    large = run_doc(fleet_doc(nodes={"min": 2, "desired": 3, "max": 4}))
    before = {(r.type, r.name): r.inputs for r in small.resources}
    after = {(r.type, r.name): r.inputs for r in large.resources}
    assert before.keys() == after.keys()
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {(ASG, "gpu-asg")}
    for typ in (LT, PG, SUBNET, SG):
        assert any(t == typ for t, _ in before)


# --- the EC2 API's own checks -----------------------------------------------------

FAKE_IDS = {"subnet": "subnet-0123456789abcdef0", "sg": "sg-0123456789abcdef0", "arn": "arn:aws:iam::123456789012:instance-profile/node"}


def to_api(value, key: str = ""):
    """pulumi-aws inputs -> EC2 API parameters: first letter upper-cased, numbers as
    ints, "true"/"false" as booleans, securityGroups -> Groups, tags as Key/Value lists."""
    if isinstance(value, dict):
        if key == "tags":
            return [{"Key": k, "Value": v} for k, v in value.items()]
        return {("Groups" if k == "securityGroups" else k[0].upper() + k[1:]): to_api(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [to_api(v, key) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value in ("true", "false"):
        return value == "true"
    if mocks.is_placeholder(value):
        kind = "arn" if value.endswith(".arn>") else "sg" if "efa-efa" in value else "subnet"
        return FAKE_IDS[kind]
    return value


def launch_template_data(lt: mocks.Registered) -> dict:
    inputs = {k: v for k, v in lt.inputs.items() if k not in ("description", "tags")}
    return to_api(inputs)


@pytest.mark.parametrize("stack", EXAMPLES)
def test_launch_template_passes_botocore_validation_and_round_trips_through_moto(stack):
    run = run_stack(stack)
    model = botocore.session.get_session().get_service_model("ec2")
    interface_types = set(model.shape_for("NetworkInterfaceType").enum)
    strategies = set(model.shape_for("PlacementStrategy").enum)
    for pg in run.of_type(PG):
        assert pg.inputs["strategy"] in strategies
    for lt in run.of_type(LT):
        data = launch_template_data(lt)
        params = {"LaunchTemplateName": lt.name, "LaunchTemplateData": data}
        report = botocore.validate.ParamValidator().validate(params, model.operation_model("CreateLaunchTemplate").input_shape)
        assert not report.has_errors(), report.generate_report()
        assert {i["InterfaceType"] for i in data["NetworkInterfaces"]} <= interface_types
        with moto.mock_aws():
            ec2 = boto3.client("ec2", region_name="us-east-1")
            ec2.create_launch_template(**params)
            got = ec2.describe_launch_template_versions(LaunchTemplateName=lt.name)["LaunchTemplateVersions"][0]
        back = got["LaunchTemplateData"]["NetworkInterfaces"]
        assert [(i["NetworkCardIndex"], i["DeviceIndex"], i["InterfaceType"]) for i in back] == \
               [(i["NetworkCardIndex"], i["DeviceIndex"], i["InterfaceType"]) for i in data["NetworkInterfaces"]]
        assert got["LaunchTemplateData"]["MetadataOptions"]["HttpTokens"] == "required"


def test_botocore_check_catches_a_misnamed_parameter():
    """The validation above must be able to fail."""
    model = botocore.session.get_session().get_service_model("ec2")
    params = {"LaunchTemplateName": "x", "LaunchTemplateData": {"NetworkInterfaces": [{"NetworkCardIdx": 1}]}}
    report = botocore.validate.ParamValidator().validate(params, model.operation_model("CreateLaunchTemplate").input_shape)
    assert report.has_errors() and "NetworkCardIdx" in report.generate_report()


# --- scale ------------------------------------------------------------------------


def p5_doc(nodes: int, layout: str = "ena-primary") -> dict:
    return base_doc(network={"vpcCidr": "10.0.0.0/16"},
                    fleets=[{"name": "p5", "instanceType": "p5.48xlarge", "availabilityZone": "us-east-1a",
                             "efaLayout": layout, "nodes": {"desired": nodes}}])


def test_2500_p5_nodes_plan_inside_a_slash_16():
    run = run_doc(p5_doc(2500))
    subnet = run.one(SUBNET, "efa-private-us-east-1a").inputs["cidrBlock"]
    assert subnet == "10.0.0.0/19"  # us-east-1a: the first eighth of the /16, 8,187 addresses
    asg = run.one(ASG).inputs
    assert asg["maxSize"] == 2500


def test_a_fleet_that_cannot_fit_names_the_fleet_and_the_numbers():
    with pytest.raises(config.ConfigError) as err:
        config.load(p5_doc(70000))
    (problem,) = err.value.problems
    assert problem.path == "efa-infra:fleets[0].nodes.max"
    assert re.search(r"fleet 'p5' cannot fit: 70000 nodes x 1 private addresses each = 70000; the private subnet", problem.message)
    assert "the private subnet 10.0.0.0/19 of us-east-1a has room for 8187" in problem.message
    assert "network.subnetCidrs.us-east-1a.private" in problem.message and "network.secondaryCidr" in problem.message


def test_boot_script_is_valid_bash_and_counts_efa_devices_as_the_launch_does(tmp_path):
    import base64
    import subprocess

    from components.planning.bootstrap import COUNT_EFA_DEVICES

    run = run_stack("p5-ec2")
    script = base64.b64decode(run.one(LT, "p5-lt").inputs["userData"]).decode()
    assert COUNT_EFA_DEVICES.strip() in script and "expected=32" in script
    (tmp_path / "boot.sh").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "boot.sh")], check=True, timeout=30)


def test_ec2_nodes_may_push_ssh_keys_only_into_their_own_fleet():
    run = run_doc(base_doc(), stack="research")
    (peers,) = [r for r in run.of_type("aws:iam/rolePolicy:RolePolicy") if r.name == "gpu-peers"]
    document = json.loads(peers.inputs["policy"])
    describe, topology, push = document["Statement"]
    assert topology["Action"] == "ec2:DescribeInstanceTopology"  # tests/test_topology_order.py checks its scope
    assert (describe["Action"], describe["Resource"]) == ("ec2:DescribeInstances", "*")
    assert push["Action"] == "ec2-instance-connect:SendSSHPublicKey"
    assert push["Condition"] == {"StringEquals": {"aws:ResourceTag/efa-infra:fleet": "gpu", "aws:ResourceTag/efa-infra:stack": "research"}}
    # The tags the condition names are the ones the fleet's instances are launched with.
    tags = run.one(LT).inputs["tagSpecifications"][0]["tags"]
    assert (tags["efa-infra:fleet"], tags["efa-infra:stack"]) == ("gpu", "research")
    with moto.mock_aws():  # moto checks policy documents as IAM does
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_role(RoleName="node", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}))
        iam.put_role_policy(RoleName="node", PolicyName="peers", PolicyDocument=peers.inputs["policy"])
