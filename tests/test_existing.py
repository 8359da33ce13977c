"""Bring your own network and cluster: existing VPC, subnets and EKS cluster read
through data sources (answered here as AWS would), and clusters not managed at all."""

from __future__ import annotations

import pytest

from components import config, launch, offline
from conftest import ROOT, base_doc, settings_of
from test_launch import check_manifest, pod_templates, schema_versions

SUBNET_A, SUBNET_B = "subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"
VPC = "vpc-0123456789abcdef0"


def doc(nodes_max: int = 4, eks: dict | None = None) -> dict:
    d = base_doc(network={"existing": {"vpcId": VPC, "privateSubnetIds": {"us-east-1a": SUBNET_A, "us-east-1b": SUBNET_B}}})
    d["fleets"][0]["nodes"] = {"desired": 2, "max": nodes_max}
    if eks:
        d["eks"] = eks
    return d


def lookups(**subnet_a) -> offline.Lookups:
    """AWS's answers: both subnets private and roomy, subnet A changed as given."""
    subnets = {
        SUBNET_A: {"id": SUBNET_A, "vpcId": VPC, "availabilityZone": "us-east-1a", "mapPublicIpOnLaunch": False,
                   "availableIpAddressCount": 250, **subnet_a},
        SUBNET_B: {"id": SUBNET_B, "vpcId": VPC, "availabilityZone": "us-east-1b", "mapPublicIpOnLaunch": False,
                   "availableIpAddressCount": 250},
    }
    return {
        offline.GET_VPC: lambda args: {"id": args["id"]},
        offline.GET_SUBNET: lambda args: subnets[args["id"]],
        offline.GET_CLUSTER: lambda args: {
            "name": args["name"], "version": "1.32", "endpoint": "https://ABC.gr7.us-east-1.eks.amazonaws.com",
            "certificateAuthorities": [{"data": "LS0tLS1CRUdJTg=="}],
            "vpcConfig": {"clusterSecurityGroupId": "sg-0ccccccccccccccc0"},
        },
    }


def test_fleet_uses_the_given_subnet_and_only_the_missing_parts_are_created():
    run = offline.run(settings_of(doc()), "byo", lookups())
    assert run.error is None, run.error
    types = {r.type for r in run.resources}
    assert not types & {"aws:ec2/vpc:Vpc", "aws:ec2/subnet:Subnet", "aws:ec2/natGateway:NatGateway", "aws:ec2/internetGateway:InternetGateway"}
    assert {"aws:ec2/securityGroup:SecurityGroup", "aws:ec2/placementGroup:PlacementGroup",
            "aws:ec2/launchTemplate:LaunchTemplate", "aws:autoscaling/group:Group"} <= types
    assert run.one("aws:ec2/securityGroup:SecurityGroup").inputs["vpcId"] == VPC
    lt = run.one("aws:ec2/launchTemplate:LaunchTemplate").inputs
    assert {i["subnetId"] for i in lt["networkInterfaces"]} == {SUBNET_A}
    assert run.one("aws:autoscaling/group:Group").inputs["vpcZoneIdentifiers"] == [SUBNET_A]


@pytest.mark.parametrize("answer,message", [
    ({"mapPublicIpOnLaunch": True}, f"{SUBNET_A} assigns public IPs on launch; fleet 'gpu' needs a private subnet"),
    ({"availabilityZone": "us-east-1c"}, f"{SUBNET_A} is in us-east-1c, but fleet 'gpu' runs in us-east-1a"),
    ({"availableIpAddressCount": 3}, f"{SUBNET_A} has 3 free addresses; fleet 'gpu' needs 4 at nodes.max"),
    ({"vpcId": "vpc-0ffffffffffffffff"}, f"{SUBNET_A} is in vpc-0ffffffffffffffff, not in the stack's VPC {VPC}"),
], ids=["public", "wrong-az", "full", "other-vpc"])
def test_a_bad_subnet_is_a_clean_error_naming_subnet_and_fleet_and_nothing_is_registered(answer, message):
    run = offline.run(settings_of(doc()), "byo", lookups(**answer))
    assert run.error is not None and message in run.error
    assert "efa-infra:network.existing.privateSubnetIds.us-east-1a" in run.error
    assert "Traceback" not in run.error
    assert run.resources == []


def test_existing_network_config_is_checked_before_any_lookup():
    creating = doc()
    creating["network"]["vpcCidr"] = "10.0.0.0/16"
    with pytest.raises(config.ConfigError, match="efa-infra:network: vpcCidr describe a VPC to create"):
        config.load(creating)
    elsewhere = doc()
    elsewhere["fleets"][0]["availabilityZone"] = "us-east-1d"
    with pytest.raises(config.ConfigError, match=r"efa-infra:fleets\[0\].availabilityZone: no subnet for us-east-1d"):
        config.load(elsewhere)


def test_node_groups_join_an_existing_cluster():
    # On EKS a node takes an address per pod too: 4 g6.8xlarge nodes need 848.
    run = offline.run(settings_of(doc(eks={"enabled": True, "existing": {"clusterName": "ml-shared"}})), "byo",
                      lookups(availableIpAddressCount=1000))
    assert run.error is None, run.error
    assert run.of_type("eks:index:Cluster") == [] and run.of_type("aws:kms/key:Key") == []
    ng = run.one("aws:eks/nodeGroup:NodeGroup").inputs
    assert ng["clusterName"] == "ml-shared" and ng["subnetIds"] == [SUBNET_A]
    access = run.one("aws:eks/accessEntry:AccessEntry").inputs
    assert (access["clusterName"], access["type"], access["principalArn"]) == ("ml-shared", "EC2_LINUX", "<eks-node.arn>")
    lt = run.one("aws:ec2/launchTemplate:LaunchTemplate").inputs
    assert lt["networkInterfaces"][0]["securityGroups"] == ["<efa-efa.id>", "sg-0ccccccccccccccc0"]
    assert run.one("pulumi:providers:kubernetes") is not None


def test_hyperpod_jobs_stack_registers_no_aws_resource_and_requests_p5_devices():
    settings = config.read_stack_file(ROOT / "stacks" / "Pulumi.hyperpod-jobs.yaml")
    run = offline.run(settings, "hyperpod-jobs")
    assert run.error is None, run.error
    assert [r.type for r in run.resources] == ["efa-infra:index:Job", "efa-infra:index:Job"]
    cfg = config.load_file(ROOT / "stacks" / "Pulumi.hyperpod-jobs.yaml")
    for job in cfg.jobs:
        docs = launch.render_manifests(cfg, job)
        for d in docs:
            check_manifest(d, schema_versions(cfg))
        limits = [c["resources"]["limits"] for d in docs for t in pod_templates(d) for c in t["spec"]["containers"]
                  if "resources" in c and "vpc.amazonaws.com/efa" in c["resources"].get("limits", {})]
        assert limits and all(lim["vpc.amazonaws.com/efa"] == 32 and lim["nvidia.com/gpu"] == 8 for lim in limits)
    assert run.outputs["jobs"]["finetune"]["manifests"] == launch.render_manifests(cfg, cfg.jobs[0])
