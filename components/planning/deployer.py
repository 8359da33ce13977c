"""The deployer's path to the API server: from where `pulumi up` runs, which
endpoint of a cluster the stack creates it reaches, and what must admit it.

`pulumi up` applies the namespaces, device plugins, operators and jobs through
the Kubernetes provider from the deployer itself, so a cluster whose endpoint
the deployer cannot reach stops at the first Kubernetes resource. EKS's
endpoints (EKS User Guide, cluster-endpoint): the private one sits on the
control plane's network interfaces in the VPC, behind the cluster security
group, and inside the VPC the endpoint's name resolves to it whenever private
access is on (always, here); the public one admits only `publicAccessCidrs`
and no security group applies to it. So a deployer inside the VPC, or routed
into it, needs an ingress rule on 443 of the cluster security group; one
outside the VPC with a public endpoint needs its addresses in
`publicAccessCidrs`. Nothing is inside, or routed into, a VPC before the
`pulumi up` that creates it: a stack that creates its VPC deploys through the
public endpoint limited to the runner's addresses (which the policy pack's
prod rule accepts); a private-only endpoint needs a VPC that exists first
(network.existing). This module decides which; the flows of the offline plan
check that the registered resources do it. Pure: no Pulumi import.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .config.errors import Problem, key_path
from .config.stack import StackConfig

HOSTED_RUNNER = "ubuntu-latest"  # a stack without a cluster of its own calls only AWS's public APIs
ENDPOINT_GUIDE = "https://docs.aws.amazon.com/eks/latest/userguide/cluster-endpoint.html"


@dataclass(frozen=True)
class Source:
    """One place the deployer's requests come from, and the endpoint it reaches."""

    name: str  # as the flows name the party: "deployer (sg-...)" or "deployer (10.0.0.0/24)"
    group: str | None
    cidr: str | None
    endpoint: str  # "private" (cluster security group, rule of ours) or "public" (publicAccessCidrs)


def applies(cfg: StackConfig) -> bool:
    """Whether the stack creates a cluster and applies Kubernetes resources to it."""
    return cfg.eks.enabled and cfg.eks.existing is None


def sources(cfg: StackConfig) -> list[Source]:
    """The deployer's sources of a stack, each with the endpoint it reaches. With a VPC the stack creates, every
    source must come through the public endpoint (`problems` says why). In an existing VPC each is admitted to the
    private endpoint: a runner inside the VPC resolves the endpoint to it even when a public one exists, and its
    blocks are known only at deploy time, so the rule is made whatever the address."""
    d = cfg.eks.deployer
    if not applies(cfg) or d is None:
        return []
    endpoint = "public" if cfg.network.existing is None else "private"
    return ([Source(f"deployer ({g})", g, None, endpoint) for g in d.security_group_ids]
            + [Source(f"deployer ({c})", None, c, endpoint) for c in d.cidrs])


def admitted(cfg: StackConfig) -> list[Source]:
    """The sources the stack admits on 443 into the cluster security group with rules of its own."""
    return [s for s in sources(cfg) if s.endpoint == "private"]


def runs_on(cfg: StackConfig) -> str:
    """Where the stack's `pulumi up` runs: the runner label the workflow's deploy job takes (for a joined cluster
    too, whose device plugins are applied through its endpoint)."""
    return cfg.eks.deployer.runs_on if cfg.eks.enabled and cfg.eks.deployer is not None else HOSTED_RUNNER


def problems(cfg: StackConfig) -> list[Problem]:
    """A new cluster whose API server the deployer cannot reach, named by the key to set."""
    d = cfg.eks.deployer
    if not cfg.eks.enabled:
        return [Problem(key_path(("eks", "deployer")), "only used with eks.enabled: without a cluster `pulumi up` calls "
                        "only AWS's public APIs")] if d is not None else []
    if cfg.eks.existing is not None:
        # The device plugins still go through the joined cluster's endpoint: runsOn says from where. Admitting that
        # runner is the cluster owner's business (its endpoint settings and security group), not this stack's.
        return [Problem(key_path(("eks", "deployer", key)), "a joined cluster's endpoint and security group are its "
                        "owner's: have the runner admitted there, and keep only runsOn here")
                for key, given in (("cidrs", d.cidrs), ("securityGroupIds", d.security_group_ids)) if given] if d else []
    at = lambda *key: key_path(("eks", "deployer", *key))  # noqa: E731
    public_key = key_path(("eks", "publicAccessCidrs"))
    public = cfg.eks.public_access_cidrs
    endpoint = f"public to {', '.join(public)} and private" if public else "private only"
    if d is None:
        return [Problem(at(), f"required: `pulumi up` applies the cluster's Kubernetes resources from where it runs, and "
                              f"the API endpoint is {endpoint} ({public_key}). Set runsOn, and cidrs within "
                              "publicAccessCidrs (a runner with fixed egress addresses) or, in an existing VPC, "
                              f"securityGroupIds or cidrs admitted on 443 into the cluster security group ({ENDPOINT_GUIDE})")]
    if not d.security_group_ids and not d.cidrs:
        return [Problem(at(), f"says where `pulumi up` runs ({d.runs_on}) but not how it reaches the API endpoint "
                              f"({endpoint}): give cidrs or securityGroupIds")]
    out = [Problem(at("cidrs", k), f"{cidr} is every address: name the deployer's own addresses")
           for k, cidr in enumerate(d.cidrs) if ipaddress.IPv4Network(cidr).prefixlen == 0]
    inside: set[str] = set()
    if cfg.network.existing is None:
        # Nothing sits in, or is routed into, a VPC before the `pulumi up` that creates it.
        why = ("the stack creates the VPC, so no runner is in it or routed into it when the first `pulumi up` "
               "reaches the API: that run needs the public endpoint limited to the runner's addresses (cidrs within "
               f"{public_key}). For a private-only endpoint, deploy into a VPC that exists first (network.existing)")
        if d.security_group_ids:
            out.append(Problem(at("securityGroupIds"), why))
        blocks = [ipaddress.IPv4Network(c) for c in (cfg.network.vpc_cidr, cfg.network.secondary_cidr) if c]
        for k, cidr in enumerate(d.cidrs):
            if any(ipaddress.IPv4Network(cidr).subnet_of(b) for b in blocks):
                inside.add(cidr)
                out.append(Problem(at("cidrs", k), f"{cidr} is inside the VPC: {why}"))
    for s in sources(cfg):
        if s.cidr is not None and s.cidr not in inside and s.endpoint == "public" and not any(
                ipaddress.IPv4Network(s.cidr).subnet_of(ipaddress.IPv4Network(p)) for p in public):
            out.append(Problem(public_key, f"the API endpoint is {endpoint}, which the deployer's {s.cidr} cannot reach "
                                           "on the first `pulumi up` of a VPC the stack creates: list it here"))
    return out
