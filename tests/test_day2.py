"""Day 2 on every example stack: each everyday change touches only what it names.

Each change is run through the program under Pulumi's mocks and compared with the
stack as committed by `components.offline.diff` (replacement from the provider's ForceNew
facts). For each, the exact resources that change are asserted, and that nothing of
the network, the cluster or another fleet is replaced or deleted.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest

from components.offline import diff, mocks
from components.planning import eks_versions
from conftest import STACKS, register, stack_settings

F, J, NET, EKS = "efa-infra:fleets", "efa-infra:jobs", "efa-infra:network", "efa-infra:eks"
ASG, NODEGROUP, LT = "aws:autoscaling/group:Group", "aws:eks/nodeGroup:NodeGroup", "aws:ec2/launchTemplate:LaunchTemplate"
ENDPOINT, SUBNET = "aws:ec2/vpcEndpoint:VpcEndpoint", "aws:ec2/subnet:Subnet"
SCHEDULE = "aws:autoscaling/schedule:Schedule"


settings = stack_settings


@lru_cache(maxsize=None)
def base(stack: str) -> tuple:
    return tuple(register(settings(stack), stack))


def day2(stack: str, change) -> tuple[list[diff.Change], list[mocks.Registered]]:
    s = copy.deepcopy(settings(stack))
    change(s)
    after = register(s, stack)
    return diff.compare(list(base(stack)), after), list(base(stack)) + after


def owner(r: mocks.Registered, fleets: set[str]) -> str:
    """What a resource belongs to: 'network', 'cluster', 'fleet:<name>' or 'job:<name>'."""
    if r.type == NODEGROUP and r.name.removesuffix("-nodes") in fleets:
        return f"fleet:{r.name.removesuffix('-nodes')}"
    if r.type == "efa-infra:index:EfaFleet" or r.parent in fleets:
        return f"fleet:{r.name if r.parent is None else r.parent}"
    if r.type == "efa-infra:index:EfaNetwork" or r.parent == "efa":
        return "network"
    if r.type == "efa-infra:index:EfaCluster" or r.parent == "eks":
        return "cluster"
    return f"job:{r.name if r.parent is None else r.parent}"


def assert_untouched_except(changes, resources, fleet: str | None = None):
    """Nothing of the network, the cluster (control plane, system nodes, its Kubernetes provider) or a
    fleet other than `fleet` is replaced or deleted."""
    fleets = {r.name for r in resources if r.type == "efa-infra:index:EfaFleet"}
    by_urn = {r.urn: r for r in resources}
    for c in changes:
        if c.action not in ("replace", "delete"):
            continue
        whose = owner(by_urn[c.urn], fleets)
        assert whose != "network", c
        assert not (whose == "cluster" and (c.type in diff.PROTECTED_TYPES or c.type == "pulumi:providers:kubernetes")), c
        assert not whose.startswith("fleet:") or whose == f"fleet:{fleet}", c


def actions(changes) -> set[tuple[str, str, str]]:
    return {(c.action, c.type, c.name) for c in changes}


def fleets_of(stack: str) -> list[dict]:
    return settings(stack).get(F) or []


def on_eks(stack: str) -> bool:
    return bool((settings(stack).get(EKS) or {}).get("enabled"))


def scaling(stack: str, fleet: str) -> tuple[str, str]:
    return (NODEGROUP, f"{fleet}-nodes") if on_eks(stack) else (ASG, f"{fleet}-asg")


def block_schedules(stack: str, fleet: dict) -> set[tuple[str, str, str]]:
    """The scheduled actions a Capacity Block fleet's size is written into (its block read at deploy
    time, so not started offline): to size at the start, and on plain EC2 to zero before the end."""
    if (fleet.get("capacity") or {}).get("type") != "capacity-block":
        return set()
    ends = ["start"] if on_eks(stack) else ["start", "end"]
    return {("update", SCHEDULE, f"{fleet['name']}-block-{e}") for e in ends}


WITH_FLEETS = [s for s in STACKS if fleets_of(s)]
CREATED_NETWORK = [s for s in WITH_FLEETS if "existing" not in (settings(s).get(NET) or {})]


@pytest.mark.parametrize("stack", WITH_FLEETS)
def test_raising_max_within_the_room_changes_only_the_scaling_group(stack):
    fleet = fleets_of(stack)[0]
    maximum = fleet["nodes"].get("max", fleet["nodes"]["desired"])
    changes, resources = day2(stack, lambda s: s[F][0]["nodes"].update(max=maximum + 8))
    assert actions(changes) == {("update", *scaling(stack, fleet["name"]))} | block_schedules(stack, fleet)
    group = next(c for c in changes if (c.type, c.name) == scaling(stack, fleet["name"]))
    assert group.changed == [("scalingConfig.maxSize" if on_eks(stack) else "maxSize")]
    assert_untouched_except(changes, resources)


@pytest.mark.parametrize("stack", WITH_FLEETS)
def test_changing_desired_changes_only_the_scaling_group_and_jobs_sized_by_it(stack):
    fleet = fleets_of(stack)[0]
    nodes = fleet["nodes"]
    desired = nodes["desired"] - 1 if nodes["desired"] > max(nodes.get("min", 0), 1) else nodes["desired"] + 1
    changes, resources = day2(stack, lambda s: s[F][0]["nodes"].update(desired=desired, max=max(desired, nodes.get("max", 0))))
    # A Capacity Block fleet asks for no nodes before its block starts: its size lives in the scale-up action.
    blocked = {c for c in block_schedules(stack, fleet) if c[2].endswith("-block-start")}
    expected = blocked or {("update", *scaling(stack, fleet["name"]))}
    if not on_eks(stack):  # a job without `nodes` runs on the fleet's desired count: its node script says so
        expected |= {("update", "aws:ssm/document:Document", f"{j['name']}-launch")
                     for j in settings(stack).get(J) or [] if j["fleet"] == fleet["name"] and "nodes" not in j}
    assert actions(changes) == expected
    assert_untouched_except(changes, resources)


def new_az_fleet(stack: str) -> tuple[str, str]:
    """A fleet in an AZ the stack does not use yet: (fleet name, AZ)."""
    used = ({f["availabilityZone"] for f in fleets_of(stack)} | set((settings(stack).get(NET) or {}).get("availabilityZones", []))
            | set((settings(stack).get(EKS) or {}).get("availabilityZones", [])))
    region = settings(stack)["aws:region"]
    return "extra", next(f"{region}{letter}" for letter in "abcdef" if f"{region}{letter}" not in used)


def add_new_az_fleet(stack: str):
    name, az = new_az_fleet(stack)

    def change(s):
        s[F].append({"name": name, "instanceType": "p5.48xlarge", "availabilityZone": az, "nodes": {"desired": 2, "max": 8}})
        existing = (s.get(NET) or {}).get("existing")
        if existing:  # a network the stack does not own: the new AZ's subnet is given
            existing["privateSubnetIds"][az] = "subnet-0f1e2d3c4b5a69788"
    return change


@pytest.mark.parametrize("stack", WITH_FLEETS)
def test_adding_a_fleet_in_a_new_az_adds_its_subnets_and_fleet_and_replaces_nothing(stack):
    name, az = new_az_fleet(stack)
    changes, resources = day2(stack, add_new_az_fleet(stack))
    assert not [c for c in changes if c.action in ("replace", "delete")], changes
    fleets = {r.name for r in resources if r.type == "efa-infra:index:EfaFleet"}
    by_urn = {r.urn: r for r in resources}
    for c in changes:
        if c.action == "create":
            assert owner(by_urn[c.urn], fleets) == f"fleet:{name}" or az in c.name, c
        else:  # the endpoints reach the new AZ in place: the interface ones by its subnet, S3 by its route table
            assert (c.action, c.type, c.changed) in [("update", ENDPOINT, ["subnetIds"]), ("update", ENDPOINT, ["routeTableIds"])], c
    created = actions(changes)
    assert ("create", *scaling(stack, name)) in created
    if stack in CREATED_NETWORK:
        assert {("create", SUBNET, f"efa-private-{az}"), ("create", SUBNET, f"efa-public-{az}")} <= created
    else:
        assert not [c for c in changes if c.type == SUBNET]
    # The cluster's subnets are its own AZs', so the cluster and its system node group are left alone.
    assert not [c for c in changes if c.name in ("eks-cluster", "eks-system")]


def added_job(stack: str) -> dict:
    target = (fleets_of(stack) or settings(stack)["efa-infra:clusters"])[0]["name"]
    job = {"name": "eval", "fleet": target, "launcher": "torchrun", "command": ["eval.py"], "nodes": 1}
    if on_eks(stack) or not fleets_of(stack):
        job["image"] = "public.ecr.aws/example/eval:1"
    return job


@pytest.mark.parametrize("stack", STACKS)
def test_adding_a_job_creates_only_the_job(stack):
    changes, _ = day2(stack, lambda s: s.setdefault(J, []).append(added_job(stack)))
    expected = {("create", "efa-infra:index:Job", "eval")}
    if fleets_of(stack) and not on_eks(stack):
        expected.add(("create", "aws:ssm/document:Document", "eval-launch"))  # its node script
    assert actions(changes) == expected


@pytest.mark.parametrize("stack", [s for s in STACKS if settings(s).get(J)])
def test_removing_a_job_deletes_only_the_job(stack):
    jobs = settings(stack)[J]
    gone = jobs[-1]
    changes, resources = day2(stack, lambda s: s.__setitem__(J, s[J][:-1]))
    expected = {("delete", "efa-infra:index:Job", gone["name"])}
    if fleets_of(stack) and not on_eks(stack):
        expected.add(("delete", "aws:ssm/document:Document", f"{gone['name']}-launch"))
    # Operators are a cluster setting: the last job of a kind going leaves its operator (and CRDs) in place.
    assert actions(changes) == expected
    assert_untouched_except(changes, resources)


@pytest.mark.parametrize("stack", CREATED_NETWORK)
def test_adding_an_interface_endpoint_creates_only_the_endpoint(stack):
    had = (settings(stack).get(NET) or {}).get("interfaceEndpoints") or []
    changes, _ = day2(stack, lambda s: s[NET].setdefault("interfaceEndpoints", []).append("logs"))
    expected = {("create", ENDPOINT, "efa-logs")}
    if not had:  # the first endpoint brings the group that lets the VPC reach the endpoints
        expected |= {("create", "aws:ec2/securityGroup:SecurityGroup", "efa-endpoints"),
                     ("create", "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", "efa-endpoints-https")}
    assert actions(changes) == expected


@pytest.mark.parametrize("stack", STACKS)
def test_moving_the_eks_version_one_minor_up_updates_only_the_control_plane(stack):
    """From the minor below the stack's own version (the calendar's default, or the one it sets) to it: the one
    step EKS takes. The node groups keep their version (eks.nodeGroupVersion unset) and diff says they lag."""
    current = (settings(stack).get(EKS) or {}).get("version") or eks_versions.default_version()
    major, minor = eks_versions.minor(current)
    earlier = copy.deepcopy(settings(stack))
    earlier.setdefault(EKS, {}).update(version=f"{major}.{minor - 1}")
    before = register(earlier, stack)
    changes = diff.compare(before, list(base(stack)))
    if on_eks(stack):
        assert actions(changes) == {("update", "eks:index:Cluster", "eks-cluster")}
        assert changes[0].changed == ["version"]
        assert diff.eks_refusals(before, list(base(stack))) == []
        (note,) = diff.eks_notes(before, list(base(stack)), changes)
        assert "stay behind the control plane" in note
    else:  # config a stack without EKS does not use changes nothing
        assert changes == []


@pytest.mark.parametrize("stack", WITH_FLEETS)
def test_pinning_an_ami_changes_only_that_fleet(stack):
    fleet = fleets_of(stack)[0]["name"]
    # On EKS the boot check needs an AMI whose nodeadm reads drop-ins: its release is said with it.
    pin = {"ami": "ami-0123456789abcdef0", **({"amiRelease": "v20251023"} if on_eks(stack) else {})}
    changes, resources = day2(stack, lambda s: s[F][0].update(pin))
    lt = ("update", LT, f"{fleet}-lt")
    if on_eks(stack) and "ami" in fleets_of(stack)[0]:
        # Another pinned AMI: a new template version, which the node group follows in place.
        assert actions(changes) == {lt, ("update", NODEGROUP, f"{fleet}-nodes")}
    elif on_eks(stack):
        # EKS takes no amiType beside a pinned AMI, and amiType is ForceNew: a new node group (and so a new
        # Auto Scaling group for a Capacity Block fleet's scale-up to act on).
        follows = {("replace", c[1], c[2]) for c in block_schedules(stack, fleets_of(stack)[0]) if c[2].endswith("-block-start")}
        assert actions(changes) == {lt, ("replace", NODEGROUP, f"{fleet}-nodes")} | follows
        (ng,) = [c for c in changes if c.type == NODEGROUP]
        assert ng.because == ["amiType"]
    else:
        # A new launch template version, which the Auto Scaling group follows.
        assert actions(changes) == {lt, ("update", ASG, f"{fleet}-asg")}
        (asg,) = [c for c in changes if c.type == ASG]
        assert asg.changed == ["launchTemplate.version"]
    assert_untouched_except(changes, resources, fleet=fleet)
