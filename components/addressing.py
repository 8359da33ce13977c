"""The CIDR plan: how many addresses a node takes, and subnets sized to hold them.

Pure: no Pulumi import.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .catalog import InstanceType
from .efa import LayoutSummary

AWS_RESERVED_PER_SUBNET = 5  # network, router, DNS, future use, broadcast
MIN_PRIVATE_PREFIX = 24  # room for system nodes and endpoints even beside a tiny fleet
PUBLIC_PREFIX = 26  # NAT gateways and, on EKS, load balancers only
# EKS's max-pods ceiling: 110 below 30 vCPUs, 250 above (EKS max-pods calculator).
MAX_PODS_SMALL, MAX_PODS_LARGE, MAX_PODS_VCPU_THRESHOLD = 110, 250, 30


def cni_interfaces(summary: LayoutSummary) -> int:
    """Interfaces on card 0 the VPC CNI can give pod addresses from: the primary
    (which has an IP in every layout) plus the slots the EFA devices leave free."""
    return 1 + summary.card0_free_slots


def max_pods(itype: InstanceType, summary: LayoutSummary) -> int:
    """Pods a node can address with the VPC CNI in secondary-IP mode, capped as EKS caps it."""
    cap = MAX_PODS_LARGE if itype.vcpus > MAX_PODS_VCPU_THRESHOLD else MAX_PODS_SMALL
    return min(cap, cni_interfaces(summary) * (itype.ipv4_addresses_per_interface - 1) + 2)


def node_addresses(itype: InstanceType, summary: LayoutSummary, on_eks: bool) -> int:
    """Private addresses one node may take from its subnet.

    Plain EC2: one per interface that has an IP (efa-only devices have none).
    EKS: also the primary IPs of the ENIs the CNI may attach on card 0 and one
    address per pod (host-network pods reuse the node's, so this is an upper bound).
    """
    if not on_eks:
        return summary.private_ips
    return summary.private_ips + summary.card0_free_slots + max_pods(itype, summary)


class AddressingError(ValueError):
    def __init__(self, az: str, need: int, room: int, vpc: str, why: str):
        self.az, self.need, self.room, self.vpc = az, need, room, vpc
        super().__init__(why)


@dataclass
class Subnet:
    kind: str  # "private" or "public"
    az: str
    cidr: str | None  # None for an existing subnet: read at deploy time
    need: int = 0  # addresses the fleets in it may take
    fleets: list[str] = field(default_factory=list)
    existing_id: str | None = None

    @property
    def capacity(self) -> int | None:
        if self.cidr is None:
            return None
        return ipaddress.ip_network(self.cidr).num_addresses - AWS_RESERVED_PER_SUBNET


def prefix_for(need: int) -> int:
    """The longest prefix whose subnet holds `need` addresses after AWS's reserved five."""
    prefix = 28  # the smallest subnet AWS allows
    while prefix > 0 and (1 << (32 - prefix)) - AWS_RESERVED_PER_SUBNET < need:
        prefix -= 1
    return prefix


def plan_subnets(vpc_cidr: str, private_need: dict[str, int], fleets_by_az: dict[str, list[str]]) -> list[Subnet]:
    """One private subnet per AZ sized for its need (at least a /24) and one
    public /26 per AZ, carved from the VPC largest first so blocks stay aligned.

    Raises AddressingError naming the AZ whose subnet does not fit.
    """
    vpc = ipaddress.ip_network(vpc_cidr)
    wanted: list[tuple[int, str, str]] = []  # (prefix, kind, az)
    for az in sorted(private_need):
        prefix = min(prefix_for(private_need[az]), MIN_PRIVATE_PREFIX)
        if prefix < vpc.prefixlen:
            room = vpc.num_addresses - AWS_RESERVED_PER_SUBNET
            raise AddressingError(
                az, private_need[az], room, vpc_cidr,
                f"{az} needs {private_need[az]} private addresses; the VPC {vpc_cidr} has {room} in all",
            )
        wanted.append((prefix, "private", az))
        wanted.append((PUBLIC_PREFIX, "public", az))
    # Largest first; ties broken by kind and AZ so the plan is stable.
    wanted.sort(key=lambda w: (w[0], w[1] != "private", w[2]))
    subnets: list[Subnet] = []
    cursor = int(vpc.network_address)
    end = int(vpc.broadcast_address) + 1
    for prefix, kind, az in wanted:
        size = 1 << (32 - prefix)
        cursor = (cursor + size - 1) // size * size
        if cursor + size > end:
            used = sum(ipaddress.ip_network(s.cidr).num_addresses for s in subnets)
            room = vpc.num_addresses - used
            raise AddressingError(
                az, private_need.get(az, 0), room, vpc_cidr,
                f"the VPC {vpc_cidr} is too small: after {len(subnets)} subnets "
                f"({used} addresses), no /{prefix} is left for the {kind} subnet in {az}",
            )
        cidr = str(ipaddress.ip_network((cursor, prefix)))
        subnets.append(
            Subnet(kind, az, cidr, private_need[az] if kind == "private" else 0,
                   list(fleets_by_az.get(az, [])) if kind == "private" else [])
        )
        cursor += size
    return sorted(subnets, key=lambda s: (s.kind != "private", s.az))

