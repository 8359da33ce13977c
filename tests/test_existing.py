"""Bring your own network and cluster: existing VPC, subnets and EKS cluster read
through data sources (answered here as AWS would), and clusters not managed at all."""

from __future__ import annotations

import pytest

from components.planning import config, launch
from components.offline import mocks
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


def lookups(vpcs: dict | None = None, clusters: tuple[str, ...] = ("ml-shared",), subnets_missing: tuple[str, ...] = (),
            **subnet_a) -> mocks.Lookups:
    """AWS's answers: the VPC (by id, or by Name tag in `vpcs`) and both subnets exist,
    private and roomy, subnet A changed as given; `subnets_missing` do not exist."""
    subnets = {
        SUBNET_A: {"id": SUBNET_A, "vpcId": VPC, "availabilityZone": "us-east-1a", "mapPublicIpOnLaunch": False,
                   "availableIpAddressCount": 250, **subnet_a},
        SUBNET_B: {"id": SUBNET_B, "vpcId": VPC, "availabilityZone": "us-east-1b", "mapPublicIpOnLaunch": False,
                   "availableIpAddressCount": 250},
    }
    for sid in subnets_missing:
        del subnets[sid]
    named = vpcs or {}

    def get_vpcs(args: dict) -> dict:
        if "tags" in args:
            return {"ids": named.get(args["tags"]["Name"], [])}
        return {"ids": [v for v in mocks.filter_values(args, "vpc-id") if v == VPC]}

    return {
        mocks.GET_VPCS: get_vpcs,
        # A list lookup leaves out what does not exist; the single lookup would fail on it.
        mocks.GET_SUBNETS: lambda args: {"ids": [s for s in mocks.filter_values(args, "subnet-id") if s in subnets]},
        mocks.GET_SUBNET: lambda args: subnets[args["id"]],
        mocks.GET_CLUSTERS: lambda args: {"names": list(clusters)},
        mocks.GET_CLUSTER: lambda args: {
            "name": args["name"], "version": "1.32", "endpoint": "https://ABC.gr7.us-east-1.eks.amazonaws.com",
            "certificateAuthorities": [{"data": "LS0tLS1CRUdJTg=="}],
            "vpcConfig": {"clusterSecurityGroupId": "sg-0ccccccccccccccc0"},
            "kubernetesNetworkConfigs": [{"serviceIpv4Cidr": "172.20.0.0/16"}],
        },
    }


def test_fleet_uses_the_given_subnet_and_only_the_missing_parts_are_created():
    run = mocks.run(settings_of(doc()), "byo", lookups())
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
    run = mocks.run(settings_of(doc()), "byo", lookups(**answer))
    assert run.error is not None and message in run.error
    assert "efa-infra:network.existing.privateSubnetIds.us-east-1a" in run.error
    assert "Traceback" not in run.error
    assert run.resources == []


def named_vpc() -> dict:
    d = doc()
    d["network"]["existing"] = {"vpcName": "ml-shared", "privateSubnetIds": d["network"]["existing"]["privateSubnetIds"]}
    return d


@pytest.mark.parametrize("settings,answers,key,message", [
    (doc(), dict(subnets_missing=(SUBNET_A,)), "network.existing.privateSubnetIds.us-east-1a", f"{SUBNET_A} does not exist in us-east-1"),
    (named_vpc(), dict(), "network.existing.vpcName", "no VPC in us-east-1 has the Name tag 'ml-shared'"),
    (named_vpc(), dict(vpcs={"ml-shared": [VPC, "vpc-0ffffffffffffffff"]}), "network.existing.vpcName",
     f"2 VPCs in us-east-1 have the Name tag 'ml-shared' ({VPC}, vpc-0ffffffffffffffff): name one by vpcId"),
    ({**doc(), "network": {"existing": {**doc()["network"]["existing"], "vpcId": "vpc-0eeeeeeeeeeeeeeee"}}}, dict(),
     "network.existing.vpcId", "vpc-0eeeeeeeeeeeeeeee does not exist in us-east-1"),
    (doc(eks={"enabled": True, "existing": {"clusterName": "ml-shard"}}), dict(availableIpAddressCount=1000),
     "eks.existing.clusterName", "no EKS cluster 'ml-shard' in us-east-1; did you mean ml-shared?"),
], ids=["no-subnet", "no-vpc-by-name", "two-vpcs-by-name", "no-vpc-by-id", "no-cluster"])
def test_what_does_not_exist_is_a_clean_error_and_nothing_is_registered(settings, answers, key, message):
    run = mocks.run(settings_of(settings), "byo", lookups(**answers))
    assert run.error is not None and f"efa-infra:{key}: {message}" in run.error
    assert "Traceback" not in run.error
    assert run.resources == []


def test_every_missing_resource_is_named_at_once():
    settings = named_vpc()
    settings["eks"] = {"enabled": True, "existing": {"clusterName": "other"}}
    run = mocks.run(settings_of(settings), "byo", lookups(subnets_missing=(SUBNET_A, SUBNET_B), clusters=()))
    assert run.error is not None
    for key in ("vpcName", "privateSubnetIds.us-east-1a", "privateSubnetIds.us-east-1b"):
        assert f"efa-infra:network.existing.{key}:" in run.error
    assert "efa-infra:eks.existing.clusterName: no EKS cluster 'other' in us-east-1; clusters there: none" in run.error
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
    run = mocks.run(settings_of(doc(eks={"enabled": True, "existing": {"clusterName": "ml-shared"}})), "byo",
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
    run = mocks.run(settings, "hyperpod-jobs")
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
