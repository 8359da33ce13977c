"""The stable address plan, the secondary CIDR block, and protection."""

from __future__ import annotations

import itertools

import pytest

from components.planning import addressing, config
from components.offline import diff, mocks
from conftest import DEPLOYER, ROOT, base_doc, settings_of

SUBNET = "aws:ec2/subnet:Subnet"


def fleet(name: str, az: str, nodes: int, **extra) -> dict:
    return {"name": name, "instanceType": "p5.48xlarge", "availabilityZone": az, "nodes": {"desired": 1, "max": nodes}, **extra}


def cidrs(doc: dict) -> dict[tuple[str, str], str]:
    cfg = config.load(doc)
    return {(s.kind, s.az): s.cidr for s in config.address_plan(cfg, cfg.catalog())}


def test_a_subnet_depends_only_on_the_vpc_and_its_az():
    a, b, c = (fleet("a", "us-east-1a", 64), fleet("b", "us-east-1b", 8), fleet("c", "us-east-1c", 2000))
    plans = [cidrs(base_doc(network={"vpcCidr": "10.40.0.0/16"}, fleets=list(order))) for order in itertools.permutations([a, b, c])]
    assert all(p == plans[0] for p in plans)  # order
    alone = cidrs(base_doc(network={"vpcCidr": "10.40.0.0/16"}, fleets=[fleet("a", "us-east-1a", 2)]))
    assert {k: v for k, v in plans[0].items() if k[1] == "us-east-1a"} == alone  # node counts, other fleets
    assert plans[0] == {("private", "us-east-1a"): "10.40.0.0/19", ("private", "us-east-1b"): "10.40.32.0/19",
                        ("private", "us-east-1c"): "10.40.64.0/19", ("public", "us-east-1a"): "10.40.224.0/26",
                        ("public", "us-east-1b"): "10.40.224.64/26", ("public", "us-east-1c"): "10.40.224.128/26"}


@pytest.mark.parametrize("vpc,private,public", [
    ("10.20.0.0/20", "10.20.2.0/23", "10.20.14.64/26"),
    ("10.0.0.0/22", "10.0.0.128/25", "10.0.3.144/28"),  # the smallest block: /28 public subnets
])
def test_slots_scale_with_the_block(vpc, private, public):
    assert addressing.slot_cidr(vpc, "private", "us-east-1b") == private
    assert addressing.slot_cidr(vpc, "public", "us-east-1b") == public


def test_a_fleet_past_its_room_names_the_fleet_the_need_the_room_and_the_ways_out():
    doc = base_doc(network={"vpcCidr": "10.0.0.0/20"},
                   fleets=[fleet("big", "us-east-1a", 400), fleet("small", "us-east-1b", 4)], eks={"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], **DEPLOYER})
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    (problem,) = err.value.problems
    assert problem.path == "efa-infra:fleets[0].nodes.max"
    assert "fleet 'big' cannot fit: 400 nodes x 52 private addresses each = 20800" in problem.message
    assert "the private subnet 10.0.0.0/23 of us-east-1a has room for 507" in problem.message
    for way in ("network.subnetCidrs.us-east-1a.private", "network.secondaryCidr", "fleets[].subnet: secondary", "network.vpcCidr"):
        assert way in problem.message


def test_an_explicit_cidr_gives_room_and_must_fit_its_block_and_neighbours():
    roomy = base_doc(network={"vpcCidr": "10.0.0.0/16", "subnetCidrs": {"us-east-1a": {"private": "10.0.0.0/18"}}},
                     fleets=[fleet("big", "us-east-1a", 12000)])
    assert cidrs(roomy)[("private", "us-east-1a")] == "10.0.0.0/18"
    clash = base_doc(network={"vpcCidr": "10.0.0.0/16", "subnetCidrs": {"us-east-1a": {"private": "10.0.0.0/18"}}},
                     fleets=[fleet("big", "us-east-1a", 12), fleet("b", "us-east-1b", 2)])
    with pytest.raises(config.ConfigError) as err:
        config.load(clash)
    assert [p.path for p in err.value.problems] == ["efa-infra:network.subnetCidrs.us-east-1a.private"]
    assert "overlaps the private subnet 10.0.32.0/19 of us-east-1b" in str(err.value)
    outside = base_doc(network={"vpcCidr": "10.0.0.0/16", "subnetCidrs": {"us-east-1a": {"public": "10.9.0.0/26"}}})
    with pytest.raises(config.ConfigError, match=r"subnetCidrs.us-east-1a.public: 10.9.0.0/26 is not inside 10.0.0.0/16"):
        config.load(outside)


@pytest.mark.parametrize("network,key", [
    ({"vpcCidr": "10.0.0.0/24"}, "efa-infra:network.vpcCidr"),
    ({"secondaryCidr": "10.0.128.0/17"}, "efa-infra:network"),  # overlaps the default vpcCidr
    ({"subnetCidrs": {"us-east-1c": {"private": "10.0.64.0/19"}}}, "efa-infra:network.subnetCidrs.us-east-1c"),
    ({"subnetCidrs": {"us-east-1a": {"secondary": "100.64.0.0/19"}}}, "efa-infra:network.subnetCidrs.us-east-1a.secondary"),
    ({"natGateways": "per-az", "natAvailabilityZone": "us-east-1a"}, "efa-infra:network.natAvailabilityZone"),
])
def test_address_keys_are_checked(network, key):
    with pytest.raises(config.ConfigError) as err:
        config.load(base_doc(network=network))
    assert any(p.path.startswith(key) for p in err.value.problems), err.value


@pytest.mark.parametrize("primary,secondary,ok", [
    ("10.40.0.0/16", "100.64.0.0/16", True),
    ("10.40.0.0/16", "10.41.0.0/16", True),
    ("10.40.0.0/16", "192.168.0.0/16", False),  # another RFC 1918 range
    ("10.40.0.0/16", "198.19.0.0/16", False),
    ("172.20.0.0/16", "10.1.0.0/16", False),
    ("100.64.0.0/16", "172.16.0.0/16", False),  # from a non-RFC 1918 primary: no RFC 1918 block
])
def test_a_secondary_block_follows_aws_association_rules(primary, secondary, ok):
    doc = base_doc(network={"vpcCidr": primary, "secondaryCidr": secondary})
    if ok:
        assert config.load(doc).network.secondary_cidr == secondary
        return
    with pytest.raises(config.ConfigError, match=r"efa-infra:network: secondaryCidr .* takes no secondary block from"):
        config.load(doc)


def test_an_az_past_the_slots_is_named():
    # No region's AZ list reaches h today (the config refuses us-east-1h as no AZ of us-east-1); the plan still
    # names such an AZ, should a refreshed list have one.
    with pytest.raises(addressing.AddressingError, match=r"us-east-1h: the plan has slots for AZ letters a to g"):
        addressing.plan_subnets("10.0.0.0/16", None, {"us-east-1h"}, {}, [])
    with pytest.raises(config.ConfigError, match=r"'us-east-1h' is not an AZ of us-east-1; its AZs: us-east-1a, "):
        config.load(base_doc(network={"availabilityZones": ["us-east-1h"]}))


def test_the_cluster_azs_get_subnets_only_for_a_new_cluster():
    off = base_doc(eks={"availabilityZones": ["us-east-1a", "us-east-1b"]})
    assert {az for _, az in cidrs(off)} == {"us-east-1a"}
    on = base_doc(eks={"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], **DEPLOYER})
    assert {az for _, az in cidrs(on)} == {"us-east-1a", "us-east-1b"}


def test_eks_names_its_own_azs():
    with pytest.raises(config.ConfigError) as err:
        config.load(base_doc(eks={"enabled": True, **DEPLOYER}, network={"availabilityZones": ["us-east-1b"]}))
    (problem,) = err.value.problems
    assert problem.path == "efa-infra:eks.availabilityZones" and "us-east-1a, us-east-1b" in problem.message


# --- the secondary CIDR block --------------------------------------------------------


def secondary_run() -> mocks.Run:
    doc = base_doc(network={"vpcCidr": "10.0.0.0/20", "secondaryCidr": "100.64.0.0/16"},
                   fleets=[fleet("big", "us-east-1a", 2000, subnet="secondary"), fleet("small", "us-east-1a", 4)])
    run = mocks.run(settings_of(doc), "t")
    assert run.error is None, run.error
    return run


def test_a_secondary_block_gets_subnets_planned_the_same_way_and_takes_the_fleets_sent_there():
    run = secondary_run()
    block = run.one("aws:ec2/vpcIpv4CidrBlockAssociation:VpcIpv4CidrBlockAssociation").inputs
    assert block == {"vpcId": "<efa-vpc.id>", "cidrBlock": "100.64.0.0/16"}
    secondary = run.one(SUBNET, "efa-secondary-us-east-1a").inputs
    assert (secondary["cidrBlock"], secondary["vpcId"], secondary["mapPublicIpOnLaunch"]) == ("100.64.0.0/19", "<efa-vpc.id>", False)
    assert run.one(SUBNET, "efa-private-us-east-1a").inputs["cidrBlock"] == "10.0.0.0/23"
    assert run.one("aws:autoscaling/group:Group", "big-asg").inputs["vpcZoneIdentifiers"] == ["<efa-secondary-us-east-1a.id>"]
    assert run.one("aws:autoscaling/group:Group", "small-asg").inputs["vpcZoneIdentifiers"] == ["<efa-private-us-east-1a.id>"]
    routes = [r.inputs for r in run.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation")]
    assert {"subnetId": "<efa-secondary-us-east-1a.id>", "routeTableId": "<efa-private-us-east-1a.id>"} in routes


def test_a_fleet_sent_to_a_secondary_block_needs_one():
    with pytest.raises(config.ConfigError) as err:
        config.load(base_doc(fleets=[fleet("big", "us-east-1a", 2, subnet="secondary")]))
    assert [p.path for p in err.value.problems] == ["efa-infra:fleets[0].subnet"]


def test_adding_a_secondary_block_replaces_nothing():
    before = mocks.run(settings_of(base_doc(network={"vpcCidr": "10.0.0.0/20"})), "t").resources
    after = mocks.run(settings_of(base_doc(network={"vpcCidr": "10.0.0.0/20", "secondaryCidr": "100.64.0.0/16"})), "t").resources
    changes = diff.compare(before, after)
    assert {c.action for c in changes} == {"create"}
    assert {c.name for c in changes} == {"efa-secondary", "efa-secondary-us-east-1a"}


# --- protection -------------------------------------------------------------------------


def protected(doc_or_settings: dict, stack: str) -> set[tuple[str, str]]:
    run = mocks.run(doc_or_settings, stack)
    assert run.error is None, run.error
    return {(r.type, r.name) for r in run.resources if r.protect}


def test_production_stacks_protect_the_network_and_the_cluster():
    got = protected(config.read_stack_file(ROOT / "stacks" / "Pulumi.prod.yaml"), "prod")
    # prod has no secondary block and no file system (tests/test_fsx.py checks a protected file system).
    assert {t for t, _ in got} == set(diff.PROTECTED_TYPES) - {"aws:ec2/vpcIpv4CidrBlockAssociation:VpcIpv4CidrBlockAssociation",
                                                               "aws:fsx/lustreFileSystem:LustreFileSystem"}
    assert ("aws:eks/nodeGroup:NodeGroup", "eks-system") in got and ("eks:index:Cluster", "eks-cluster") in got
    assert len(got) == 10  # VPC, 4 subnets, 2 NAT gateways, the cluster, 2 node groups


def test_protection_follows_the_key_and_otherwise_the_stack_name():
    doc = base_doc()
    assert protected(settings_of(doc), "dev") == set()
    assert ("aws:ec2/vpc:Vpc", "efa-vpc") in protected(settings_of(doc), "production")
    assert protected(settings_of({**doc, "protect": False}), "prod") == set()
    assert {t for t, _ in protected(settings_of({**doc, "protect": True}), "dev")} == {
        "aws:ec2/vpc:Vpc", "aws:ec2/subnet:Subnet", "aws:ec2/natGateway:NatGateway"}
