"""Checks on resources a stack uses but does not create: whether AWS has them
at all, and the facts it gives about existing subnets and capacity
reservations, held against what the plan needs of them.

The lookups themselves run in the Pulumi layer (stack.py) before any resource
is registered; this module only judges their answers. Pure: no Pulumi import.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import datetime, timezone

from .config import ExistingNetwork, FleetConfig, Problem, key_path
from .plan import StackPlan


@dataclass(frozen=True)
class SubnetFacts:
    id: str
    vpc_id: str
    availability_zone: str
    map_public_ip_on_launch: bool
    available_ips: int


# Lookups by list (found ids or names) never fail for a missing resource, so a
# typo becomes a clean problem here instead of the provider's error.


def find_vpc(ex: ExistingNetwork, found: list[str], region: str) -> tuple[str | None, list[Problem]]:
    """The VPC the config names, given the ids a lookup by its id or Name tag found."""
    if ex.vpc_id:
        if found:
            return found[0], []
        return None, [Problem(key_path(("network", "existing", "vpcId")), f"{ex.vpc_id} does not exist in {region}")]
    at = key_path(("network", "existing", "vpcName"))
    if len(found) == 1:
        return found[0], []
    if not found:
        return None, [Problem(at, f"no VPC in {region} has the Name tag {ex.vpc_name!r}")]
    return None, [Problem(at, f"{len(found)} VPCs in {region} have the Name tag {ex.vpc_name!r} "
                              f"({', '.join(sorted(found))}): name one by vpcId")]


def missing_subnets(ex: ExistingNetwork, found: set[str], region: str) -> list[Problem]:
    return [Problem(key_path(("network", "existing", "privateSubnetIds", az)), f"{sid} does not exist in {region}")
            for az, sid in sorted(ex.private_subnet_ids.items()) if sid not in found]


def missing_cluster(name: str, found: list[str], region: str) -> list[Problem]:
    if name in found:
        return []
    near = difflib.get_close_matches(name, found, n=2)
    hint = f"did you mean {', '.join(near)}?" if near else f"clusters there: {', '.join(sorted(found)) or 'none'}"
    return [Problem(key_path(("eks", "existing", "clusterName")), f"no EKS cluster {name!r} in {region}; {hint}")]


def check_subnets(plan: StackPlan, vpc_id: str | None, facts: dict[str, SubnetFacts]) -> list[Problem]:
    """Every way an existing subnet fails its fleets, naming the subnet and the fleets.
    Subnets without facts (not found) and the VPC check without a VPC are left to the finders above."""
    problems = []
    for subnet in plan.subnets:
        f = facts.get(subnet.existing_id)
        if f is None:
            continue
        at = key_path(("network", "existing", "privateSubnetIds", subnet.az))
        who = ", ".join(repr(n) for n in subnet.fleets) or "no fleet"
        if vpc_id is not None and f.vpc_id != vpc_id:
            problems.append(Problem(at, f"{f.id} is in {f.vpc_id}, not in the stack's VPC {vpc_id}"))
        if f.map_public_ip_on_launch:
            problems.append(Problem(at, f"{f.id} assigns public IPs on launch; fleet {who} needs a private subnet "
                                        "(instances with several network interfaces cannot get a public IPv4 address)"))
        if f.availability_zone != subnet.az:
            problems.append(Problem(at, f"{f.id} is in {f.availability_zone}, but fleet {who} runs in {subnet.az}"))
        if f.available_ips < subnet.need:
            fleets = [fp for fp in plan.fleets if fp.name in subnet.fleets]
            detail = "; ".join(f"{fp.name!r}: {fp.config.nodes.maximum} nodes x {fp.addresses_per_node}" for fp in fleets)
            problems.append(Problem(at, f"{f.id} has {f.available_ips} free addresses; fleet {who} needs {subnet.need} at nodes.max ({detail})"))
    return problems


@dataclass(frozen=True)
class ClusterFacts:
    """What EKS says of an existing cluster our node groups join."""

    name: str
    version: str
    endpoint: str
    certificate_authority: str
    security_group_id: str  # the cluster security group: nodes need it to reach the control plane
    service_cidr: str  # the cluster's service CIDR: a pinned AMI's nodeadm config needs it

    @classmethod
    def of(cls, c) -> "ClusterFacts":
        """From EKS's DescribeCluster answer as pulumi-aws's get_cluster returns it."""
        return cls(c.name, c.version, c.endpoint, c.certificate_authorities[0].data, c.vpc_config.cluster_security_group_id,
                   c.kubernetes_network_configs[0].service_ipv4_cidr)

    def node_join(self) -> dict[str, str]:
        """The nodeadm NodeConfig `spec.cluster` that lets a node of a pinned AMI join."""
        return {"name": self.name, "apiServerEndpoint": self.endpoint, "certificateAuthority": self.certificate_authority,
                "cidr": self.service_cidr}


def kubeconfig(cluster: ClusterFacts, region: str) -> dict:
    """A kubeconfig that authenticates with `aws eks get-token`, as `aws eks update-kubeconfig` writes it."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster.name, "cluster": {"server": cluster.endpoint, "certificate-authority-data": cluster.certificate_authority}}],
        "contexts": [{"name": cluster.name, "context": {"cluster": cluster.name, "user": cluster.name}}],
        "current-context": cluster.name,
        "users": [{"name": cluster.name, "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "aws",
            "args": ["eks", "get-token", "--cluster-name", cluster.name, "--region", region, "--output", "json"],
        }}}],
    }


# --- On-Demand Capacity Reservations ----------------------------------------------------------
# Read through AWS Cloud Control (CloudFormation's resource schemas) as AWS::EC2::CapacityReservation and
# AWS::ResourceGroups::Group: pulumi-aws 7.x has a data source for Capacity Blocks only, which leaves ODCRs out.
# The property names are the CloudFormation schema's (awscc provider 1.98.0 docs, data source
# awscc_ec2_capacity_reservation: State, InstanceMatchCriteria, TotalInstanceCount, EndDate, EndDateType, ...),
# which are EC2's DescribeCapacityReservations member names; the values are EC2's enums
# (botocore ec2 2016-11-15: CapacityReservationState, InstanceMatchCriteria, EndDateType).
RESERVATION_TYPE = "AWS::EC2::CapacityReservation"
RESOURCE_GROUP_TYPE = "AWS::ResourceGroups::Group"  # read by its ARN; its Resources lists the members' ARNs
RESERVATION_PROPERTIES = {"InstanceType": "instance_type", "AvailabilityZone": "availability_zone", "State": "state",
                          "InstanceMatchCriteria": "instance_match_criteria", "TotalInstanceCount": "total_instance_count",
                          "EndDateType": "end_date_type", "EndDate": "end_date"}  # Cloud Control's name -> ours


def assigned_later(value) -> bool:
    """A value only AWS can give, which the offline plan shows as `<...>`."""
    return isinstance(value, str) and value.startswith("<") and value.endswith(">")


@dataclass(frozen=True)
class ReservationFacts:
    """What EC2 says of an On-Demand Capacity Reservation (each value may be `<...>` offline)."""

    id: str
    instance_type: str | None
    availability_zone: str | None
    state: str | None
    instance_match_criteria: str | None
    total_instance_count: int | str | None
    end_date_type: str | None
    end_date: str | None

    @classmethod
    def of(cls, reservation_id: str, props: dict) -> "ReservationFacts":
        """From Cloud Control's properties of an AWS::EC2::CapacityReservation."""
        return cls(reservation_id, **{ours: props.get(theirs) for theirs, ours in RESERVATION_PROPERTIES.items()})

    def ends(self) -> datetime | None:
        """When it ends, None when it does not (EndDateType unlimited) or AWS has yet to say."""
        if self.end_date_type != "limited" or not self.end_date or assigned_later(self.end_date):
            return None
        return datetime.fromisoformat(self.end_date.replace("Z", "+00:00"))


def reservation_ids_of_group(resources: list[str]) -> list[str]:
    """The reservation ids among a resource group's member ARNs (arn:...:capacity-reservation/cr-...)."""
    return sorted(arn.rsplit("/", 1)[1] for arn in resources if ":capacity-reservation/" in arn)


def check_reservations(i: int, fleet: FleetConfig, found: list[ReservationFacts], now: datetime) -> list[Problem]:
    """Every way the reservations a fleet targets fail it, each naming the key to change."""
    at = lambda *key: key_path(("fleets", i, *key))  # noqa: E731
    c = fleet.capacity
    where = f"capacity group {c.reservation_group_arn}" if c.reservation_group_arn else f"reservation {c.reservation_id}"
    if not found:
        return [Problem(at("capacity", "reservationGroupArn"), f"{where} holds no capacity reservation")]
    problems = []
    usable = 0
    for r in found:
        name = f"reservation {r.id}" + (f" (in {where})" if c.reservation_group_arn else "")
        wrong = []
        for key, got, want in (("instanceType", r.instance_type, fleet.instance_type),
                               ("availabilityZone", r.availability_zone, fleet.availability_zone)):
            if got and not assigned_later(got) and got != want:
                problems.append(Problem(at(key), f"{want!r}, but {name} is for {got!r}"))
                wrong.append(key)
        if r.state and not assigned_later(r.state) and r.state != "active":
            problems.append(Problem(at("capacity", "reservationGroupArn" if c.reservation_group_arn else "reservationId"),
                                    f"{name} is {r.state}, not active: nothing launches into it"))
            wrong.append("state")
        if r.instance_match_criteria and not assigned_later(r.instance_match_criteria) and r.instance_match_criteria != c.instance_match:
            why = ("any matching instance of the account may take its capacity" if r.instance_match_criteria == "open"
                   else "only launches that name it use it")
            problems.append(Problem(at("capacity", "instanceMatch"),
                                    f"{c.instance_match!r}, but {name} is {r.instance_match_criteria!r} ({why}); "
                                    f"set instanceMatch: {r.instance_match_criteria} or use a {c.instance_match} reservation"))
        ends = r.ends()
        if ends is not None and c.needed_until is not None and ends < c.needed_until:
            problems.append(Problem(at("capacity", "neededUntil"),
                                    f"{c.needed_until.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}, but {name} ends at {r.end_date}"))
        if not wrong and isinstance(r.total_instance_count, int):
            usable += r.total_instance_count
    counted = all(isinstance(r.total_instance_count, int) for r in found)
    if counted and not any(p.path.endswith(("instanceType", "availabilityZone")) for p in problems) and fleet.nodes.maximum > usable:
        held = f"{where} holds {usable}" + (" in its active reservations for the fleet" if c.reservation_group_arn else "")
        problems.append(Problem(at("nodes", "max"), f"{fleet.nodes.maximum} nodes, but {held}"))
    if c.instance_count is not None and counted and c.instance_count != usable:
        problems.append(Problem(at("capacity", "instanceCount"), f"{c.instance_count}, but {where} holds {usable}"))
    return problems
