"""The CIDR plan: how many addresses a node takes, and where each subnet sits.

Pure: no Pulumi import.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .catalog import InstanceType
from .efa import LayoutSummary

AWS_RESERVED_PER_SUBNET = 5  # network, router, DNS, future use, broadcast
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


# The stable plan: each address block (the VPC CIDR, or its secondary block) is cut into
# eighths. AZ letters a..g own the eighth of their index for their private subnet; the last
# eighth holds the public subnets, one per letter. So a subnet's CIDR follows from the block
# and its AZ alone: node counts, other fleets and their order never move it.
SLOT_SPLIT = 3  # 2**3 = 8 slots per block
PUBLIC_AREA = (1 << SLOT_SPLIT) - 1  # the last slot
MAX_BLOCK_PREFIX = 22  # smallest block whose public slots are still /28, AWS's smallest subnet
SMALLEST_SUBNET_PREFIX = 28
KINDS = ("private", "public", "secondary")  # secondary: private, in the VPC's secondary CIDR block


VPC_CIDR_RULES = Path(__file__).resolve().parent.parent / "data" / "vpc_cidr_rules.json"


@lru_cache(maxsize=1)
def _cidr_rules() -> dict:
    return json.loads(VPC_CIDR_RULES.read_text())


def secondary_block_refusal(primary: str, secondary: str) -> str | None:
    """Why AWS would refuse `secondary` as a second block of a VPC whose primary block is `primary`, or None."""
    rules = _cidr_rules()
    net, extra = ipaddress.ip_network(primary), ipaddress.ip_network(secondary)
    if net.overlaps(extra):
        return f"it overlaps vpcCidr {primary}"
    home = next((r for r in rules["ranges"] if r != "other" and net.subnet_of(ipaddress.ip_network(r))), "other")
    for restricted in rules["ranges"][home]["restricted"]:
        if extra.overlaps(ipaddress.ip_network(restricted)):
            where = home if home != "other" else rules["ranges"]["other"]["what"]
            return (f"a VPC whose primary block is in {where} takes no secondary block from {restricted} "
                    f"({rules['source']}); 100.64.0.0/10 is the usual choice")
    return None


class AddressingError(ValueError):
    """Every problem of an address plan, each naming its subnet (kind, AZ)."""

    def __init__(self, problems: list["SubnetProblem"]):
        self.problems = problems
        super().__init__("; ".join(p.message for p in problems))


@dataclass(frozen=True)
class SubnetProblem:
    kind: str
    az: str
    message: str
    explicit: bool = False  # the CIDR came from the config, not from the AZ's slot
    over: bool = False  # the fleets in it need more addresses than it holds


@dataclass(frozen=True)
class Tenant:
    """A fleet as the address plan sees it: the subnet it takes addresses from, and how many at nodes.max."""

    fleet: str
    kind: str  # "private" or "secondary"
    az: str
    addresses: int


@dataclass
class Subnet:
    kind: str  # "private", "public" or "secondary"
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


def az_slot(az: str) -> int:
    """The AZ's letter as a slot index: us-east-1a -> 0."""
    return ord(az[-1]) - ord("a")


def slot_cidr(block: str, kind: str, az: str) -> str:
    """The subnet of `kind` in `az` that the stable plan gives it inside `block`.

    Raises ValueError for an AZ letter past g (AWS's regions have at most six AZs).
    """
    net = ipaddress.ip_network(block)
    index = az_slot(az)
    if not 0 <= index < PUBLIC_AREA:
        raise ValueError(f"{az}: the plan has slots for AZ letters a to {chr(ord('a') + PUBLIC_AREA - 1)}")
    slot = net.num_addresses >> SLOT_SPLIT
    if kind != "public":
        return str(ipaddress.ip_network((int(net.network_address) + index * slot, net.prefixlen + SLOT_SPLIT)))
    prefix = max(PUBLIC_PREFIX, net.prefixlen + 2 * SLOT_SPLIT)  # at least eight public slots in the area
    area = int(net.network_address) + PUBLIC_AREA * slot
    return str(ipaddress.ip_network((area + index * (1 << (32 - prefix)), prefix)))


def plan_subnets(vpc_cidr: str, secondary_cidr: str | None, azs: set[str], explicit: dict[tuple[str, str], str],
                 tenants: list[Tenant]) -> list[Subnet]:
    """Per AZ a private and a public subnet in `vpc_cidr`, and a private one in `secondary_cidr` when given;
    each at its slot unless `explicit` names its CIDR. The fleets (`tenants`) are checked against the room.

    Raises AddressingError with every problem: a slot that does not exist, an explicit CIDR outside
    its block, two subnets that overlap, a subnet its fleets outgrow.
    """
    blocks = {"private": vpc_cidr, "public": vpc_cidr, "secondary": secondary_cidr}
    problems: list[SubnetProblem] = []
    subnets: list[Subnet] = []
    for az in sorted(azs):
        for kind in KINDS:
            block = blocks[kind]
            if block is None:
                continue
            cidr = explicit.get((kind, az))
            if cidr is not None and not ipaddress.ip_network(cidr).subnet_of(ipaddress.ip_network(block)):
                problems.append(SubnetProblem(kind, az, f"{cidr} is not inside {block}", explicit=True))
                continue
            if cidr is None:
                try:
                    cidr = slot_cidr(block, kind, az)
                except ValueError as exc:
                    problems.append(SubnetProblem(kind, az, f"{exc}; give this AZ's subnets explicit CIDRs"))
                    continue
            subnets.append(Subnet(kind, az, cidr))
    for i, a in enumerate(subnets):
        for b in subnets[i + 1:]:
            if ipaddress.ip_network(a.cidr).overlaps(ipaddress.ip_network(b.cidr)):
                for s, other in ((a, b), (b, a)):
                    if (s.kind, s.az) in explicit:
                        problems.append(SubnetProblem(s.kind, s.az, f"{s.cidr} overlaps the {other.kind} subnet "
                                                      f"{other.cidr} of {other.az}", explicit=True))
    by_key = {(s.kind, s.az): s for s in subnets}
    for t in tenants:
        s = by_key.get((t.kind, t.az))
        if s is not None:
            s.need += t.addresses
            s.fleets.append(t.fleet)
    for s in subnets:
        if s.need > s.capacity:
            problems.append(SubnetProblem(s.kind, s.az, f"the {s.kind} subnet {s.cidr} of {s.az} has room for {s.capacity} "
                                          f"addresses; its fleets ({', '.join(s.fleets)}) need {s.need} at nodes.max",
                                          explicit=(s.kind, s.az) in explicit, over=True))
    if problems:
        raise AddressingError(problems)
    return sorted(subnets, key=lambda s: (KINDS.index(s.kind), s.az))
