"""Ranks ordered by the network on plain EC2: the launch script's order_by_topology, run (bash) against a
stand-in `aws` that answers DescribeInstances and DescribeInstanceTopology in the API's shape (requests
and answers checked against botocore's EC2 model), and the simulation of ring crossings."""

from __future__ import annotations

import json
import random

import boto3
import moto
import pytest
from moto.iam.access_control import IAMPolicy, PermissionResult

from components.offline import mocks
from conftest import base_doc, settings_of
from tools import topology_order as topo

L1, L2 = "nn-1111111111111111", "nn-2222222222222222"
SPINE_A, SPINE_B = "nn-3aaaaaaaaaaaaaaa", "nn-3bbbbbbbbbbbbbbb"


def instances(placement: dict[str, str | None]) -> dict[str, dict]:
    """ip -> instance, under layer-3 node `placement[ip]` (None: the API gives no network nodes)."""
    return {ip: {"id": f"i-{n:017x}", "type": "p5.48xlarge", "nodes": [L1, L2, spine] if spine else []}
            for n, (ip, spine) in enumerate(placement.items(), start=1)}


def test_nodes_under_the_same_lowest_network_node_get_consecutive_ranks(tmp_path):
    placement = {"10.0.0.1": SPINE_B, "10.0.0.2": SPINE_A, "10.0.0.3": SPINE_B, "10.0.0.4": SPINE_A, "10.0.0.5": SPINE_B}
    done = topo.order(list(placement), topo.stand_in(tmp_path, instances(placement)))
    # SPINE_A's nodes first (its id sorts first), each group in address order.
    assert done.ips == ["10.0.0.2", "10.0.0.4", "10.0.0.1", "10.0.0.3", "10.0.0.5"]
    assert "ranks follow the network: 5 of 5 nodes ordered by their network nodes" in done.log
    listed, asked = done.calls
    assert listed[:2] == ["ec2", "describe-instances"] and "Name=tag:efa-infra:fleet,Values=gpu" in listed
    assert asked[:4] == ["ec2", "describe-instance-topology", "--region", "us-east-1"]
    assert asked[asked.index("--instance-ids") + 1:][:5] == [instances(placement)[ip]["id"] for ip in placement]


def test_nodes_the_api_does_not_place_go_last_in_address_order(tmp_path):
    placement = {"10.0.0.1": None, "10.0.0.2": SPINE_B, "10.0.0.3": SPINE_A, "10.0.0.4": None}
    done = topo.order(list(placement), topo.stand_in(tmp_path, instances(placement)))
    assert done.ips == ["10.0.0.3", "10.0.0.2", "10.0.0.1", "10.0.0.4"]
    assert "2 of 4 nodes ordered" in done.log


@pytest.mark.parametrize("case, message", [
    ("no-topology", "ranks follow address order: DescribeInstanceTopology has no network nodes for these 3 instances"),
    ("denied", "ranks follow address order: could not list the fleet's instances"),
    ("no-aws", "ranks follow address order: no aws CLI"),
])
def test_when_the_api_says_nothing_the_address_order_stays_with_a_log_line(tmp_path, case, message):
    ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    bin_dir = None if case == "no-aws" else topo.stand_in(
        tmp_path, instances(dict.fromkeys(ips)), fail="DescribeInstances" if case == "denied" else None)
    done = topo.order(ips, bin_dir)
    assert done.ips == ips
    assert message in done.log


def test_a_large_fleet_is_asked_about_100_instances_at_a_time(tmp_path):
    rng = random.Random(3)
    placement = {f"10.0.{i // 200}.{i % 200 + 1}": rng.choice([SPINE_A, SPINE_B]) for i in range(230)}
    ips = topo.address_order(list(placement))
    done = topo.order(ips, topo.stand_in(tmp_path, instances(placement)))
    asked = [c for c in done.calls if c[1] == "describe-instance-topology"]
    assert [len(c[c.index("--instance-ids") + 1:c.index("--query")]) for c in asked] == [100, 100, 30]
    nodes_of = {ip: [L1, L2, s] for ip, s in placement.items()}
    assert topo.crossings(done.ips, nodes_of, 3) == 2


# --- the simulation -------------------------------------------------------------------


@pytest.mark.parametrize("scenario", topo.SCENARIOS, ids=[s.name for s in topo.SCENARIOS])
def test_after_ordering_a_ring_crosses_network_nodes_only_as_often_as_the_topology_forces(scenario, tmp_path):
    rng = random.Random(11)
    for n in range(2):
        figures = topo.trial(scenario, rng, tmp_path / str(n))
        for layer, (before, after, least) in figures.items():
            assert after == least, (layer, figures)
            assert before >= after
        # At the lowest layer, address order crosses more often (these seeded placements; the benchmark's figures in general).
        before, after, _ = figures[len(scenario.fanout)]
        assert before > after


def test_the_minimum_is_one_crossing_per_network_node_the_job_spans():
    nodes_of = {"a": [L1, L2, SPINE_A], "b": [L1, L2, SPINE_A], "c": [L1, L2, SPINE_B]}
    assert topo.minimum(["a", "b", "c"], nodes_of, 3) == 2 and topo.minimum(["a", "b"], nodes_of, 3) == 0
    # Every order of three nodes over two layer-3 nodes crosses twice: the minimum is reached, not beaten.
    assert {topo.crossings(o, nodes_of, 3) for o in (["a", "b", "c"], ["a", "c", "b"], ["c", "a", "b"])} == {2}


# --- the node role -------------------------------------------------------------------


def test_ec2_nodes_may_read_the_instance_topology_in_their_region_only():
    run = mocks.run(settings_of(base_doc()), "research")
    assert run.error is None, run.error
    (peers,) = [r for r in run.of_type("aws:iam/rolePolicy:RolePolicy") if r.name == "gpu-peers"]
    document = peers.inputs["policy"]
    (topology,) = [s for s in json.loads(document)["Statement"] if s["Action"] == "ec2:DescribeInstanceTopology"]
    # EC2's Describe actions take no resource-level permissions: "*" with the region as the condition.
    assert topology["Resource"] == "*"
    policy = IAMPolicy(document)
    assert policy.is_action_permitted("ec2:DescribeInstanceTopology", "*",
                                      incoming_condition_values={"aws:RequestedRegion": "us-east-1"}) == PermissionResult.PERMITTED
    assert policy.is_action_permitted("ec2:DescribeInstanceTopology", "*",
                                      incoming_condition_values={"aws:RequestedRegion": "eu-west-1"}) != PermissionResult.PERMITTED
    with moto.mock_aws():  # IAM's own check of the document, as moto makes it
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_role(RoleName="node", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}))
        iam.put_role_policy(RoleName="node", PolicyName="peers", PolicyDocument=document)
