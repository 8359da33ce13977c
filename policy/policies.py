"""The efa-infra policies: what must hold of an EFA cluster before `pulumi up`
creates it, checked on the resources the program registers.

Only this module holds policies; `policy/__main__.py` builds the PolicyPack
from `POLICIES` (constructing a PolicyPack starts a gRPC server, so nothing
that tests import may do it).

Props arrive as the engine (or the offline mocks) hand them over: camelCase
inputs, numbers as floats (`networkCardIndex: 1.0`), pulumi-aws's string
flags as "true"/"false", and values only AWS knows as placeholders
(`<efa-efa.id>` offline, the real id once deployed).

An *EFA launch template* is one that attaches an `efa` or `efa-only`
interface. A fleet with `efa: false` on an EFA-capable type gets a plain
template, which the EFA rules leave alone.

References between resources (an Auto Scaling group's launch template, a
template's security groups, a rule's group) are matched two ways, so the
stack policies work wherever they run:

- by value: the referring prop holds the target's `id` output, or offline its
  `<name.id>` placeholder;
- by the engine's property dependencies: in a preview before the target
  exists its id is unknown, and pulumi_policy raises UnknownValueError on
  reading it; the dependency still says which resource the value comes from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

from components.planning import catalog
from components.planning.efa import EFA_TYPES

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
AUTOSCALING_GROUP = "aws:autoscaling/group:Group"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS_RULE = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
LEGACY_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
EKS_COMPONENT = "eks:index:Cluster"
EKS_CLUSTER = "aws:eks/cluster:Cluster"
WORLD = ("0.0.0.0/0", "::/0")
SUBNETS_OF = {AUTOSCALING_GROUP: "vpcZoneIdentifiers", NODE_GROUP: "subnetIds"}

ENVIRONMENT_DEFAULT = "prod"

_UNKNOWN = object()  # a value the engine does not know yet (preview before the resource it comes from exists)


# --- reading props as they come ---------------------------------------------


def _get(value: Any, *path: str) -> Any:
    """value[path...]: None where a key is absent or a level is not a mapping, _UNKNOWN where not known yet."""
    for key in path:
        if not isinstance(value, Mapping):
            return None
        try:
            value = value.get(key)
        except UnknownValueError:
            return _UNKNOWN
    return value


def _items(value: Any) -> list:
    """The known elements of a list prop (unknown elements and non-lists give nothing)."""
    if not isinstance(value, Sequence) or isinstance(value, str):
        return []
    out = []
    for i in range(len(value)):
        try:
            out.append(value[i])
        except UnknownValueError:
            continue
    return out


def _true(value: Any) -> bool:
    """pulumi-aws types some flags as strings: True and "true" both mean true."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _int(value: Any) -> int:
    """Integers come as floats (1.0); an absent index is 0, as in the EC2 API."""
    return 0 if value is None else int(float(value))


def _interfaces(props: Mapping) -> list:
    return _items(_get(props, "networkInterfaces"))


def _attaches_efa(props: Mapping) -> bool:
    return any(_get(i, "interfaceType") in EFA_TYPES for i in _interfaces(props))


def _is_efa_template(res: PolicyResource) -> bool:
    return res.resource_type == LAUNCH_TEMPLATE and _attaches_efa(res.props)


def _ids(target: PolicyResource) -> set[str]:
    """How other resources name `target`: its id once AWS assigned one, or the offline placeholder."""
    ids = {f"<{target.name}.id>"}
    known = _get(target.props, "id")
    if isinstance(known, str):
        ids.add(known)
    return ids


def _refers(res: PolicyResource, prop: str, values: list, target: PolicyResource) -> bool:
    """Whether `res` names `target` in its top-level input `prop`; `values` are what was read there."""
    if _ids(target) & {v for v in values if isinstance(v, str)}:
        return True
    return any(dep.urn == target.urn for dep in (res.property_dependencies or {}).get(prop, []))


# --- 1. EFA layout ----------------------------------------------------------


def _check_efa_layout(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != LAUNCH_TEMPLATE:
        return
    name = _get(args.props, "instanceType")
    if not isinstance(name, str):
        return
    try:
        itype = catalog.get(name)
    except catalog.UnknownInstanceType:
        return  # a type declared in the stack only: its facts are not in the shipped data
    if not itype.efa_supported:
        return
    cards = {c.index: c for c in itype.network_cards}
    on_card: Counter[int] = Counter()
    taken: set[tuple[int, int]] = set()
    efa_devices = 0
    for n, iface in enumerate(_interfaces(args.props)):
        card_index, device = _int(_get(iface, "networkCardIndex")), _int(_get(iface, "deviceIndex"))
        kind = _get(iface, "interfaceType") or "interface"
        where = f"networkInterfaces[{n}] ({kind} at card {card_index}, device {device})"
        card = cards.get(card_index)
        if card is None:
            report(f"{where}: {name} has no network card {card_index} (cards {min(cards)}-{max(cards)})")
            continue
        if device >= card.maximum_network_interfaces:
            report(f"{where}: card {card_index} of {name} takes device indexes below {card.maximum_network_interfaces}")
        if kind not in card.interface_types:
            report(f"{where}: card {card_index} of {name} accepts {', '.join(card.interface_types)}")
        if (card_index, device) in taken:
            report(f"{where}: another interface already sits at card {card_index}, device {device}")
        taken.add((card_index, device))
        on_card[card_index] += 1
        efa_devices += kind in EFA_TYPES
    for card_index, count in sorted(on_card.items()):
        limit = cards[card_index].maximum_network_interfaces
        if count > limit:
            report(f"card {card_index} of {name} holds {count} interfaces; its limit is {limit}")
    # No EFA interface at all is a fleet with `efa: false`, not a broken EFA layout.
    if efa_devices and efa_devices != itype.maximum_efa_interfaces:
        report(
            f"{efa_devices} EFA devices attached; {name} has {itype.maximum_efa_interfaces} (MaximumEfaInterfaces): "
            "attach all of them, as components.efa.network_interfaces lays them out"
        )


# --- 2. one AZ and a placement group -----------------------------------------


def _launches_from(group: PolicyResource, template: PolicyResource) -> bool:
    return _refers(group, "launchTemplate", [_get(group.props, "launchTemplate", "id")], template)


def _check_placement(args: StackValidationArgs, report: ReportViolation) -> None:
    templates = [r for r in args.resources if _is_efa_template(r)]
    for lt in templates:
        has_group = _get(lt.props, "placement", "groupName") not in (None, "")
        # A reservation or capacity block fixes where instances land; a new group beside it can
        # fail with InsufficientInstanceCapacity. A bare preference ("open") fixes nothing.
        reserved = _get(lt.props, "capacityReservationSpecification", "capacityReservationTarget") is not None
        if not has_group and not reserved:
            report(
                f"launch template {lt.name}: EFA nodes need a cluster placement group (placement.groupName), "
                "or a capacity reservation target (capacityReservationSpecification.capacityReservationTarget) that decides placement",
                lt.urn,
            )
    for group in args.resources:
        key = SUBNETS_OF.get(group.resource_type)
        if key is None:
            continue
        lt = next((t for t in templates if _launches_from(group, t)), None)
        subnets = _get(group.props, key)
        if lt is None or subnets is _UNKNOWN:
            continue
        count = len(subnets) if isinstance(subnets, Sequence) else 0
        if count != 1:
            report(
                f"{group.name} launches EFA nodes from {lt.name} into {count} subnets ({key}); "
                "EFA traffic does not cross AZs: give it exactly one subnet",
                group.urn,
            )


# --- 3-5. launch template hygiene --------------------------------------------


def _check_no_public_ip(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != LAUNCH_TEMPLATE or not _attaches_efa(args.props):
        return
    for n, iface in enumerate(_interfaces(args.props)):
        if _true(_get(iface, "associatePublicIpAddress")):
            report(f"networkInterfaces[{n}] asks for a public IP address (associatePublicIpAddress); EFA nodes stay private")


def _check_imdsv2(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != LAUNCH_TEMPLATE:
        return
    tokens = _get(args.props, "metadataOptions", "httpTokens")
    if tokens != "required":
        report(f"metadataOptions.httpTokens is {tokens!r}; set it to 'required' (IMDSv2 only)")


def _check_ebs_encrypted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != LAUNCH_TEMPLATE:
        return
    for n, mapping in enumerate(_items(_get(args.props, "blockDeviceMappings"))):
        ebs = _get(mapping, "ebs")
        if isinstance(ebs, Mapping) and not _true(_get(ebs, "encrypted")):
            device = _get(mapping, "deviceName") or f"blockDeviceMappings[{n}]"
            report(f"EBS volume {device} is not encrypted (ebs.encrypted is {_get(ebs, 'encrypted')!r})")


# --- 6. the EFA security group -------------------------------------------------


def _opens_to_world(rule: PolicyResource) -> bool:
    props = rule.props
    if rule.resource_type == INGRESS_RULE:
        return _get(props, "cidrIpv4") in WORLD or _get(props, "cidrIpv6") in WORLD
    return _get(props, "type") == "ingress" and any(c in WORLD for c in _items(_get(props, "cidrBlocks")) + _items(_get(props, "ipv6CidrBlocks")))


def _check_security_group(args: StackValidationArgs, report: ReportViolation) -> None:
    resources = args.resources
    groups = [r for r in resources if r.resource_type == SECURITY_GROUP]
    rules = [r for r in resources if r.resource_type in (INGRESS_RULE, EGRESS_RULE, LEGACY_RULE)]

    def on(rule: PolicyResource, prop: str, group: PolicyResource) -> bool:
        return _refers(rule, prop, [_get(rule.props, prop)], group)

    def self_referencing(group: PolicyResource, kind: str) -> bool:
        return any(
            r.resource_type == kind and _get(r.props, "ipProtocol") == "-1"
            and on(r, "securityGroupId", group) and on(r, "referencedSecurityGroupId", group)
            for r in rules
        )

    for lt in (r for r in resources if _is_efa_template(r)):
        named = [sg for i in _interfaces(lt.props) for sg in _items(_get(i, "securityGroups"))]
        attached = [g for g in groups if _refers(lt, "networkInterfaces", named, g)]
        # Rules add up across an interface's groups: one self-referencing group lets EFA
        # traffic through (EKS adds its node group beside it), but any group open to the world opens the node.
        if not any(self_referencing(g, INGRESS_RULE) and self_referencing(g, EGRESS_RULE) for g in attached):
            report(
                f"launch template {lt.name}: none of its interfaces' security groups "
                f"({', '.join(g.name for g in attached) or 'none of this stack'}) allows all traffic (ipProtocol -1) "
                "from itself and to itself (SecurityGroupIngressRule and SecurityGroupEgressRule with "
                "referencedSecurityGroupId = the group); EFA needs both",
                lt.urn,
            )
        for group in attached:
            inline = [i for i in _items(_get(group.props, "ingress"))
                      if any(c in WORLD for c in _items(_get(i, "cidrBlocks")) + _items(_get(i, "ipv6CidrBlocks")))]
            if inline:
                report(f"security group {group.name} on EFA launch template {lt.name} takes ingress from the world (inline ingress)", group.urn)
            for rule in rules:
                if rule.resource_type != EGRESS_RULE and on(rule, "securityGroupId", group) and _opens_to_world(rule):
                    report(f"{rule.name} opens security group {group.name} on EFA launch template {lt.name} to the world", rule.urn)


# --- 7. EKS endpoint in prod -------------------------------------------------


def _check_eks_endpoint(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Which environment a run checks is the policy config `environment`; the
    pipelines set it to the stack name (scripts/pipeline.sh, the workflow).
    Without config it is "prod": a run that does not say gets the strict rule.
    """
    if args.get_config().get("environment", ENVIRONMENT_DEFAULT) != "prod":
        return
    if args.resource_type == EKS_COMPONENT:
        settings = args.props
    elif args.resource_type == EKS_CLUSTER:
        settings = _get(args.props, "vpcConfig")
    else:
        return
    public = _get(settings, "endpointPublicAccess")
    cidrs = _items(_get(settings, "publicAccessCidrs"))
    # Unset means EKS's defaults: a public endpoint, open to 0.0.0.0/0.
    if (public is None or _true(public)) and (not cidrs or "0.0.0.0/0" in cidrs):
        report(
            f"the API endpoint is public to {', '.join(cidrs) if cidrs else 'the world (no publicAccessCidrs)'}; "
            "in prod keep it private (endpointPublicAccess false; the deployer then reaches it from inside an existing "
            "VPC, efa-infra:eks.deployer) or list the CIDRs that may reach it (efa-infra:eks.publicAccessCidrs, the "
            "deployer's runner among them)"
        )


POLICIES = [
    ResourceValidationPolicy(
        name="efa-launch-template-layout",
        description="An EFA launch template carries every EFA device of its instance type (MaximumEfaInterfaces) in a layout "
        "the type's network cards accept: existing card, device index below the card's limit, accepted interface type, "
        "no more interfaces on a card than it takes.",
        validate=_check_efa_layout,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    StackValidationPolicy(
        name="efa-nodes-one-az-placement-group",
        description="EFA nodes sit in one AZ and a cluster placement group: an Auto Scaling group or EKS node group that "
        "launches from an EFA launch template has exactly one subnet, and the template names a placement group unless "
        "it targets a capacity reservation, which decides placement.",
        validate=_check_placement,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="efa-no-public-ip",
        description="No network interface of an EFA launch template asks for a public IP address.",
        validate=_check_no_public_ip,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="launch-template-imdsv2",
        description="Launch templates require IMDSv2 (metadataOptions.httpTokens = required).",
        validate=_check_imdsv2,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="launch-template-ebs-encrypted",
        description="Every EBS volume a launch template maps is encrypted.",
        validate=_check_ebs_encrypted,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    StackValidationPolicy(
        name="efa-security-group-self-referencing",
        description="The interfaces of an EFA launch template carry a security group of the stack that allows all traffic "
        "(ipProtocol -1) from and to itself, and none of their groups takes ingress from 0.0.0.0/0 or ::/0.",
        validate=_check_security_group,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="eks-endpoint-not-public-in-prod",
        description="In prod the EKS API endpoint is not public to 0.0.0.0/0: private, or public only to listed CIDRs.",
        validate=_check_eks_endpoint,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=PolicyConfigSchema(
            properties={
                "environment": {
                    "type": "string",
                    "default": ENVIRONMENT_DEFAULT,
                    "description": "The environment of the stack under check; the rule applies to 'prod'. "
                    "The pipelines pass the stack name.",
                },
            },
        ),
    ),
]
