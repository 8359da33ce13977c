"""The network flows a training cluster needs, checked against the security
groups each node, pod and endpoint carries.

The groups and rules the program registers are read from the resources (as
the offline plan records them); what pulumi-eks and EKS create that the plan
cannot show is added from FACTS, each with its source. A flow is allowed when
an egress rule of the sender's groups and an ingress rule of the receiver's
groups both admit it (security groups are stateful: replies need no rule).
Pure: no Pulumi import.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

SG, INGRESS, EGRESS = ("aws:ec2/securityGroup:SecurityGroup", "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                       "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
CLUSTER, NODE_GROUP, LT = "eks:index:Cluster", "aws:eks/nodeGroup:NodeGroup", "aws:ec2/launchTemplate:LaunchTemplate"
VPC, ENDPOINT, ASG = "aws:ec2/vpc:Vpc", "aws:ec2/vpcEndpoint:VpcEndpoint", "aws:autoscaling/group:Group"
SUBNET = "aws:ec2/subnet:Subnet"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
ANYWHERE = "0.0.0.0/0"
ALL_PORTS = (0, 65535)

PULUMI_EKS = "pulumi/pulumi-eks@7bf0c1b1 nodejs/eks/"
SG_GUIDE = "https://docs.aws.amazon.com/eks/latest/userguide/sec-group-reqs.html"
FACTS = {
    "eks-cluster-sg": "EKS creates the cluster security group: all traffic in from itself, all traffic out; it sits on the "
                      f"control plane's network interfaces ({SG_GUIDE})",
    "mng-default-sg": "A managed node group whose launch template names no security groups gets the cluster security "
                      f"group ({SG_GUIDE}; https://docs.aws.amazon.com/eks/latest/userguide/launch-templates.html)",
    "pods-node-sg": "Pods on the VPC CNI (secondary IPs, no security groups for pods) carry the security groups of the "
                    "node's primary interface (https://docs.aws.amazon.com/eks/latest/best-practices/sgpp.html)",
    "skip-default-sgs": "pulumi-eks with skipDefaultSecurityGroups creates no security group of its own and returns EKS's "
                        f"cluster group as nodeSecurityGroupId ({PULUMI_EKS}cluster/cluster.ts lines 548-554, 2120, 2196-2198)",
    "pulumi-eks-sgs": "Without it, pulumi-eks adds a cluster group (all out; 443 in from its node group) on the control plane "
                      "and a node group (all in from itself, TCP 1025-65535 and 443 from the cluster group, all out) "
                      f"({PULUMI_EKS}cluster/cluster.ts lines 554-585, 701-704; nodes/securitygroup.ts lines 100-184)",
    "karpenter-nodes": "Karpenter launches a NodePool's nodes with the security groups and subnet its EC2NodeClass selects "
                       "(securityGroupSelectorTerms, subnetSelectorTerms) on every interface (aws/karpenter-provider-aws "
                       "v1.11+, concepts/nodeclasses)",
    "eks-public-endpoint": "EKS's public API endpoint admits only the cluster's publicAccessCidrs; no security group "
                           "applies to it (https://docs.aws.amazon.com/eks/latest/userguide/cluster-endpoint.html)",
    "deployer-network": "What the deployer may send is its own network's affair, not this stack's",
    "tf-default-egress": "A security group made through terraform-provider-aws (pulumi-aws) has AWS's default allow-all "
                         "egress rule removed: only the rules registered apply (aws_security_group docs)",
}


@dataclass(frozen=True)
class Rule:
    protocol: str  # "-1" (all), "tcp", "udp"
    ports: tuple[int, int]
    peer_group: str | None
    peer_cidr: str | None
    source: str  # the resource or FACTS key it comes from


@dataclass
class Group:
    id: str
    name: str
    ingress: list[Rule] = field(default_factory=list)
    egress: list[Rule] = field(default_factory=list)


@dataclass(frozen=True)
class Party:
    name: str
    groups: tuple[str, ...]
    cidr: str | None  # where its addresses lie; None when not known offline (an existing VPC)
    facts: tuple[str, ...] = ()  # FACTS keys its groups rest on
    outside: bool = False  # sends from a network of its own (the deployer): no group of ours decides its egress


@dataclass(frozen=True)
class Need:
    name: str
    sender: str
    receiver: str
    protocol: str
    ports: tuple[int, int]


@dataclass(frozen=True)
class Verdict:
    need: Need
    allowed: bool
    egress: Rule | None
    ingress: Rule | None


def _ports(inputs: dict) -> tuple[int, int]:
    if inputs.get("ipProtocol") == "-1" or inputs.get("fromPort") is None:
        return ALL_PORTS
    return int(inputs["fromPort"]), int(inputs["toPort"])


def _everything(source: str, peer_group: str | None = None, peer_cidr: str | None = None) -> Rule:
    return Rule("-1", ALL_PORTS, peer_group, peer_cidr, source)


def _admits(rule: Rule, protocol: str, ports: tuple[int, int], peer: Party) -> bool:
    if rule.protocol != "-1" and rule.protocol != protocol:
        return False
    if not rule.ports[0] <= ports[0] <= ports[1] <= rule.ports[1]:
        return False
    if rule.peer_group is not None:
        return rule.peer_group in peer.groups
    if peer.cidr is None:
        return rule.peer_cidr == ANYWHERE
    return ipaddress.ip_network(peer.cidr).subnet_of(ipaddress.ip_network(rule.peer_cidr))


def _first(rules: list[Rule], protocol: str, ports: tuple[int, int], peer: Party) -> Rule | None:
    return next((r for r in rules if _admits(r, protocol, ports, peer)), None)


@dataclass
class Model:
    groups: dict[str, Group]
    parties: dict[str, Party]
    needs: list[Need]

    def verdict(self, need: Need) -> Verdict:
        src, dst = self.parties[need.sender], self.parties[need.receiver]
        egress = next((r for g in src.groups if g in self.groups
                       for r in [_first(self.groups[g].egress, need.protocol, need.ports, dst)] if r), None)
        ingress = next((r for g in dst.groups if g in self.groups
                        for r in [_first(self.groups[g].ingress, need.protocol, need.ports, src)] if r), None)
        if not dst.groups:  # the internet: no group of ours decides what it takes
            ingress = Rule("-1", ALL_PORTS, None, None, "outside the VPC")
        if src.outside:
            egress = Rule("-1", ALL_PORTS, None, None, "deployer-network")
        return Verdict(need, egress is not None and ingress is not None, egress, ingress)

    def verdicts(self) -> list[Verdict]:
        return [self.verdict(n) for n in self.needs]


def _id(resource) -> str:
    return f"<{resource.name}.id>"  # what the offline plan's mocks return for a resource's id


def model(resources: list, deployers: list = ()) -> Model:
    """The groups, parties and needed flows of an offline plan's resources (objects with
    .type, .name, .parent and .inputs, camelCase as the provider receives them); parties are named by fleet.
    `deployers` (planning.deployer.Source) are where `pulumi up` runs, each with the endpoint it comes to."""
    of = lambda typ: [r for r in resources if r.type == typ]  # noqa: E731
    groups: dict[str, Group] = {}
    for sg in of(SG):
        if sg.inputs.get("ingress") or sg.inputs.get("egress"):
            raise ValueError(f"security group {sg.name} has in-line rules, which this model does not read")
        groups[_id(sg)] = Group(_id(sg), sg.name)
    foreign: dict[str, Group] = {}  # rules of ours on a group EKS creates (the deployer's way in)
    for typ, side in ((INGRESS, "ingress"), (EGRESS, "egress")):
        for r in of(typ):
            i = r.inputs
            group = groups.get(i["securityGroupId"]) or foreign.setdefault(i["securityGroupId"], Group(i["securityGroupId"], ""))
            getattr(group, side).append(Rule(i["ipProtocol"], _ports(i), i.get("referencedSecurityGroupId"), i.get("cidrIpv4"), r.name))
    vpcs = of(VPC)
    cidr = vpcs[0].inputs["cidrBlock"] if vpcs else None
    subnet_cidrs = {_id(s): s.inputs["cidrBlock"] for s in of(SUBNET)}
    where = lambda subnet_ids: subnet_cidrs.get((subnet_ids or [None])[0], cidr)  # noqa: E731  (a fleet's addresses: its subnet's)
    parties: dict[str, Party] = {"internet": Party("internet", (), ANYWHERE)}
    needs: list[Need] = []
    templates = {_id(lt): lt for lt in of(LT)}

    def primary_groups(lt) -> tuple[str, ...]:
        primary = next(i for i in lt.inputs["networkInterfaces"]
                       if int(i.get("networkCardIndex", 0)) == 0 and int(i.get("deviceIndex", 0)) == 0)
        return tuple(primary.get("securityGroups") or [])

    fleets: list[str] = []
    clusters, node_groups = of(CLUSTER), of(NODE_GROUP)
    if node_groups:
        # A cluster we create is named by its resource; one we join, by the group its nodes get beside ours.
        c = clusters[0] if clusters else None
        eks_sg = (f"<{c.name}.vpcConfig.clusterSecurityGroupId>" if c else
                  next(g for ng in node_groups for g in primary_groups(templates[ng.inputs["launchTemplate"]["id"]]) if g not in groups))
        ours = foreign.get(eks_sg, Group(eks_sg, ""))
        groups[eks_sg] = Group(eks_sg, "EKS cluster security group",
                               [_everything("eks-cluster-sg", peer_group=eks_sg), *ours.ingress],
                               [_everything("eks-cluster-sg", peer_cidr=ANYWHERE), *ours.egress])
        plane = [eks_sg]
        facts = ("eks-cluster-sg", "skip-default-sgs")
        if c is not None and not c.inputs.get("skipDefaultSecurityGroups"):
            cluster_sg, node_sg = f"<{c.name}.clusterSecurityGroupId>", f"<{c.name}.nodeSecurityGroupId>"
            groups[cluster_sg] = Group(cluster_sg, "pulumi-eks cluster group",
                                       [Rule("tcp", (443, 443), node_sg, None, "pulumi-eks-sgs")],
                                       [_everything("pulumi-eks-sgs", peer_cidr=ANYWHERE)])
            groups[node_sg] = Group(node_sg, "pulumi-eks node group",
                                    [_everything("pulumi-eks-sgs", peer_group=node_sg),
                                     Rule("tcp", (1025, 65535), cluster_sg, None, "pulumi-eks-sgs"),
                                     Rule("tcp", (443, 443), cluster_sg, None, "pulumi-eks-sgs")],
                                    [_everything("pulumi-eks-sgs", peer_cidr=ANYWHERE)])
            plane.append(cluster_sg)
            facts = ("eks-cluster-sg", "pulumi-eks-sgs")
        parties["control plane"] = Party("control plane", tuple(plane), cidr, facts)
        if c is not None and deployers:
            public = c.inputs.get("publicAccessCidrs") or [] if c.inputs.get("endpointPublicAccess") else []
            endpoint = f"<{c.name}.publicEndpoint>"
            groups[endpoint] = Group(endpoint, "EKS public endpoint", [Rule("tcp", (443, 443), None, p, "eks-public-endpoint") for p in public])
            parties["API server (public endpoint)"] = Party("API server (public endpoint)", (endpoint,), None, ("eks-public-endpoint",))
            for d in deployers:
                parties[d.name] = Party(d.name, (d.group,) if d.group else (), d.cidr, ("deployer-network",), outside=True)
        # A joined cluster's own system nodes are taken to be managed node groups without launch-template groups.
        system = Party("system node", (eks_sg,), cidr, ("mng-default-sg", "pods-node-sg"))
        for ng in node_groups:
            lt_ref = ng.inputs.get("launchTemplate")
            fleet = (ng.inputs.get("labels") or {}).get("efa-infra/fleet", ng.name)
            node = (Party(f"{fleet} node", primary_groups(templates[lt_ref["id"]]), where(ng.inputs.get("subnetIds")), ("pods-node-sg",))
                    if lt_ref else system)
            if lt_ref:
                fleets.append(fleet)
            parties[node.name] = node
            parties[node.name.replace(" node", " pod")] = Party(node.name.replace(" node", " pod"), node.groups, node.cidr, node.facts)
        for nc in of(NODE_CLASS):  # a Karpenter fleet: its nodes as its EC2NodeClass makes them
            spec, fleet = nc.inputs["spec"], nc.inputs["metadata"]["name"]
            node = Party(f"{fleet} node", tuple(t["id"] for t in spec.get("securityGroupSelectorTerms") or []),
                         where([t["id"] for t in spec.get("subnetSelectorTerms") or []]), ("karpenter-nodes", "pods-node-sg"))
            fleets.append(fleet)
            parties[node.name] = node
            parties[f"{fleet} pod"] = Party(f"{fleet} pod", node.groups, node.cidr, node.facts)
        parties.setdefault("system node", system)
        parties.setdefault("system pod", Party("system pod", system.groups, cidr, system.facts))
    else:
        for asg in of(ASG):
            lt = templates[asg.inputs["launchTemplate"]["id"]]
            fleet = asg.parent or asg.name  # the fleet's component
            parties[f"{fleet} node"] = Party(f"{fleet} node", primary_groups(lt), where(asg.inputs.get("vpcZoneIdentifiers")))
            fleets.append(fleet)
    endpoints = [e for e in of(ENDPOINT) if e.inputs.get("vpcEndpointType") == "Interface"]
    if endpoints:
        parties["interface endpoints"] = Party("interface endpoints", tuple(endpoints[0].inputs.get("securityGroupIds") or []), cidr)

    nodes = [p for p in parties if p.endswith(" node")]
    add = lambda name, a, b, proto, ports: needs.append(Need(name, a, b, proto, ports))  # noqa: E731
    for f in fleets:
        node, pod = f"{f} node", f"{f} pod"
        add("EFA between a fleet's nodes (all traffic)", node, node, "-1", ALL_PORTS)
        if pod in parties:
            add("pod to pod across a fleet's nodes (all TCP)", pod, pod, "tcp", ALL_PORTS)
            add("pod to CoreDNS (UDP 53)", pod, "system pod", "udp", (53, 53))
            add("pod to CoreDNS (TCP 53)", pod, "system pod", "tcp", (53, 53))
            add("training pods to system pods (all TCP)", pod, "system pod", "tcp", ALL_PORTS)
            add("system pods to training pods (all TCP)", "system pod", pod, "tcp", ALL_PORTS)
        else:
            add("rendezvous and mpirun between a fleet's nodes (all TCP)", node, node, "tcp", ALL_PORTS)
    if "control plane" in parties:
        for node in nodes:
            add("node to the API server (TCP 443)", node, "control plane", "tcp", (443, 443))
            add("control plane to kubelet (TCP 10250)", "control plane", node, "tcp", (10250, 10250))
        for port in (443, 9443):
            add(f"control plane to webhooks (TCP {port})", "control plane", "system pod", "tcp", (port, port))
        for d in deployers if "API server (public endpoint)" in parties else ():
            add("deployer to the API server (TCP 443)", d.name,
                "control plane" if d.endpoint == "private" else "API server (public endpoint)", "tcp", (443, 443))
    for node in nodes:
        if "interface endpoints" in parties:
            add("node to interface endpoints (TCP 443)", node, "interface endpoints", "tcp", (443, 443))
        add("egress to the internet through NAT (TCP 443)", node, "internet", "tcp", (443, 443))
    return Model(groups, parties, needs)


def describe(v: Verdict) -> dict:
    """A verdict as the plan shows it."""
    rules = {side: r.source for side, r in (("egress", v.egress), ("ingress", v.ingress)) if r is not None}
    return {"flow": v.need.name, "from": v.need.sender, "to": v.need.receiver, "allowed": v.allowed, **rules}
