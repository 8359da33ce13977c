"""Where the subnets of a VPC the stack creates go, and whether each fleet fits its subnet at nodes.max;
the keys that place subnets (the cluster's AZs, explicit CIDRs, the NAT's AZ, secondary subnets)."""

from __future__ import annotations

from .. import addressing, efa, zones
from ..catalog import Catalog
from .errors import key_path
from .problems import Problem
from .fleets import FleetConfig
from .stack import StackConfig


def stack_azs(cfg: StackConfig) -> set[str]:
    """Every AZ that gets subnets: the network's, a new cluster's, the NAT gateway's and the fleets'."""
    net, eks = cfg.network, cfg.eks
    cluster = set(eks.availability_zones) if eks.enabled and eks.existing is None else set()
    return (set(net.availability_zones) | cluster | {f.availability_zone for f in cfg.fleets}
            | ({net.nat_availability_zone} if net.nat_availability_zone else set()))


def address_plan(cfg: StackConfig, cat: Catalog) -> list[addressing.Subnet]:
    """The subnets of a VPC the stack creates, with what its fleets need; raises addressing.AddressingError."""
    net = cfg.network
    tenants = [addressing.Tenant(f.name, "secondary" if f.subnet == "secondary" else "private", f.availability_zone,
                                 fleet_addresses_per_node(f, cat, cfg.eks.enabled) * f.nodes.maximum) for f in cfg.fleets]
    explicit = {(kind, az): cidr for az, cidrs in net.subnet_cidrs.items() for kind in addressing.KINDS
                if (cidr := getattr(cidrs, kind)) is not None}
    return addressing.plan_subnets(net.vpc_cidr, net.secondary_cidr, stack_azs(cfg), explicit, tenants)


def sizing_checks(cfg: StackConfig, fleets: list[tuple[int, FleetConfig]], cat: Catalog) -> list[Problem]:
    """Every subnet where the plan puts it, and fleets within their subnet's room at nodes.max."""
    try:
        address_plan(cfg, cat)
    except addressing.AddressingError as err:
        problems = []
        for p in err.problems:
            if not p.over:
                problems.append(Problem(key_path(("network", "subnetCidrs", p.az) + ((p.kind,) if p.explicit else ())), p.message))
                continue
            here = "secondary" if p.kind == "secondary" else "primary"
            for i, f in fleets:
                if (f.availability_zone, f.subnet) != (p.az, here):
                    continue
                per_node = fleet_addresses_per_node(f, cat, cfg.eks.enabled)
                problems.append(Problem(
                    key_path(("fleets", i, "nodes", "max")),
                    f"fleet {f.name!r} cannot fit: {f.nodes.maximum} nodes x {per_node} private addresses each = "
                    f"{f.nodes.maximum * per_node}; {p.message}. Lower nodes.max, or give it room: a larger "
                    f"network.subnetCidrs.{p.az}.{p.kind} (replaces that subnet), a secondary CIDR block "
                    f"(network.secondaryCidr with fleets[].subnet: secondary), or a bigger network.vpcCidr (replaces the VPC)",
                ))
        return problems
    return []


def fleet_addresses_per_node(f: FleetConfig, cat: Catalog, on_eks: bool) -> int:
    itype = cat.get(f.instance_type)
    interfaces = efa.node_interfaces(itype, f.efa_layout, f.efa)
    return addressing.node_addresses(itype, efa.summarize(itype, interfaces), on_eks)


def subnet_key_checks(cfg: StackConfig, fleets: list[tuple[int, FleetConfig]]) -> list[Problem]:
    """The keys that place subnets: the cluster's AZs, explicit CIDRs, the NAT's AZ, a fleet's secondary subnet."""
    out: list[Problem] = []
    net, eks = cfg.network, cfg.eks
    existing = net.existing
    for k, az in enumerate(eks.availability_zones):
        if why := zones.refusal(az, cfg.region):
            out.append(Problem(key_path(("eks", "availabilityZones", k)), why))
        elif existing is not None and az not in existing.private_subnet_ids:
            out.append(Problem(key_path(("eks", "availabilityZones", k)),
                               f"no subnet for {az} in network.existing.privateSubnetIds (has {', '.join(sorted(existing.private_subnet_ids))})"))
    if eks.enabled and eks.existing is None and len(set(eks.availability_zones)) < 2:
        have = sorted({f.availability_zone for _, f in fleets} | set(net.availability_zones)
                      | set(existing.private_subnet_ids if existing else ()))
        out.append(Problem(key_path(("eks", "availabilityZones")),
                           f"a new EKS cluster needs two or more AZs for its control plane and system node group, named here "
                           f"so that they stay fixed as fleets come and go (got {eks.availability_zones}); the stack's AZs: "
                           f"{', '.join(have) or 'none'}"))
    used = stack_azs(cfg)
    for az in net.subnet_cidrs:
        if why := zones.refusal(az, cfg.region):
            out.append(Problem(key_path(("network", "subnetCidrs", az)), why))
        elif az not in used:
            out.append(Problem(key_path(("network", "subnetCidrs", az)),
                               f"the stack has no subnets in {az} (its AZs: {', '.join(sorted(used))}); add it to "
                               "network.availabilityZones or remove this entry"))
        elif net.subnet_cidrs[az].secondary and not net.secondary_cidr:
            out.append(Problem(key_path(("network", "subnetCidrs", az, "secondary")), "needs network.secondaryCidr"))
    nat_az = net.nat_availability_zone
    if nat_az is not None and (why := zones.refusal(nat_az, cfg.region)):
        out.append(Problem(key_path(("network", "natAvailabilityZone")), why))
    if nat_az is not None and net.nat_gateways != "single":
        out.append(Problem(key_path(("network", "natAvailabilityZone")), "only used with natGateways single (every AZ has one with per-az)"))
    for i, f in fleets:
        if f.subnet == "secondary" and not net.secondary_cidr:
            out.append(Problem(key_path(("fleets", i, "subnet")),
                               "secondary needs network.secondaryCidr, a second CIDR block for the VPC (e.g. 100.64.0.0/16)"
                               + ("; an existing network has only the subnets listed in privateSubnetIds" if existing else "")))
    return out
