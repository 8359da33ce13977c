"""Checks on resources a stack uses but does not create: the facts AWS gives
about existing subnets, held against what the plan needs of them.

The lookups themselves run in the Pulumi layer (stack.py) before any resource
is registered; this module only judges their answers. Pure: no Pulumi import.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Problem, key_path
from .plan import StackPlan


@dataclass(frozen=True)
class SubnetFacts:
    id: str
    vpc_id: str
    availability_zone: str
    map_public_ip_on_launch: bool
    available_ips: int


def check_subnets(plan: StackPlan, vpc_id: str, facts: dict[str, SubnetFacts]) -> list[Problem]:
    """Every way an existing subnet fails its fleets, naming the subnet and the fleets."""
    problems = []
    for subnet in plan.subnets:
        f = facts[subnet.existing_id]
        at = key_path(("network", "existing", "privateSubnetIds", subnet.az))
        who = ", ".join(repr(n) for n in subnet.fleets) or "no fleet"
        if f.vpc_id != vpc_id:
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
