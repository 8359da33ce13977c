"""Runs the real Pulumi program under Pulumi's mocks: what `pulumi up` would
register, with no credentials, no CLI and no cloud.

The config reaches the program the way the engine hands it over (flat
`ns:key` values, structured ones as JSON text), and the program reads it with
the same code as under `pulumi up`. Values only AWS can know (ids, ARNs) come
back as `<name.id>`-style placeholders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import pulumi
from pulumi.runtime import mocks as pmocks
from pulumi.runtime.proto import resource_pb2

from ..planning import config
from ..planning import existing as existing_mod
from ..resources import stack as stack_mod

PROJECT = "efa-infra"


def placeholder(name: str, attr: str) -> str:
    return f"<{name}.{attr}>"


def is_placeholder(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("<") and value.endswith(">")


@dataclass
class Registered:
    type: str
    name: str
    urn: str
    parent: str | None  # the parent's name, None for top-level resources
    parent_urn: str | None
    custom: bool
    inputs: dict
    protect: bool = False
    # Which resources each input came from (the engine's property dependencies): input name -> URNs.
    dependencies: dict[str, list[str]] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)  # every resource it waits for, depends_on included


Lookups = dict[str, Callable[[dict], dict]]  # data-source token -> its answer to the given arguments
GET_VPCS, GET_SUBNETS, GET_SUBNET = "aws:ec2/getVpcs:getVpcs", "aws:ec2/getSubnets:getSubnets", "aws:ec2/getSubnet:getSubnet"
GET_CLUSTERS, GET_CLUSTER = "aws:eks/getClusters:getClusters", "aws:eks/getCluster:getCluster"
GET_ADDON = "aws:eks/getAddon:getAddon"
GET_CALLER_IDENTITY = "aws:index/getCallerIdentity:getCallerIdentity"
GET_CAPACITY_BLOCK = "aws:ec2/getCapacityBlockReservation:getCapacityBlockReservation"
GET_CLOUD_CONTROL = "aws:cloudcontrol/getResource:getResource"


def filter_values(args: dict, name: str) -> list[str]:
    """The values a list lookup's filter `name` asks for."""
    return [v for f in args.get("filters") or [] if f["name"] == name for v in f["values"]]


def stand_in_lookups(settings: dict[str, Any]) -> Lookups:
    """Answers for the existing resources a stack names, and the caller's account, standing in for AWS's:
    each one exists, each subnet private, in the AZ it is listed under, with room to spare. The
    plan marks them; the real checks happen when `pulumi up` reads the real ones."""
    doc = config.document_from_settings(engine_settings(settings))
    existing = (doc.get("network") or {}).get("existing") or {}
    az_of = {sid: az for az, sid in (existing.get("privateSubnetIds") or {}).items()}
    vpc = existing.get("vpcId") or placeholder(f"vpc Name={existing.get('vpcName')}", "id")
    cluster = ((doc.get("eks") or {}).get("existing") or {}).get("clusterName")
    return {
        GET_CALLER_IDENTITY: lambda args: {"accountId": placeholder("aws", "accountId"), "arn": placeholder("aws", "callerArn"),
                                           "userId": placeholder("aws", "userId"), "id": placeholder("aws", "accountId")},
        GET_VPCS: lambda args: {"ids": [vpc]},
        GET_SUBNETS: lambda args: {"ids": filter_values(args, "subnet-id")},
        GET_CLUSTERS: lambda args: {"names": [cluster] if cluster else []},
        GET_SUBNET: lambda args: {"id": args["id"], "vpcId": vpc, "availabilityZone": az_of.get(args["id"], "?"),
                                  "mapPublicIpOnLaunch": False, "availableIpAddressCount": 65531},
        # A block's window is AWS's to say: its times stay placeholders, its size unknown.
        GET_CAPACITY_BLOCK: lambda args: {"id": args["id"], "startDate": placeholder(args["id"], "startDate"),
                                          "endDate": placeholder(args["id"], "endDate")},
        GET_ADDON: lambda args: {"addonName": args["addonName"], "clusterName": args["clusterName"],
                                 "addonVersion": placeholder(args["addonName"], "addonVersion")},
        # A capacity reservation's facts are AWS's to say: every one a placeholder; a resource group lists
        # one reservation, named after it.
        GET_CLOUD_CONTROL: lambda args: {"id": args["identifier"], "identifier": args["identifier"], "properties": json.dumps(
            {"Resources": [f"arn:aws:ec2:{doc.get('region')}:{placeholder('aws', 'accountId')}:capacity-reservation/"
                           f"{placeholder('reservation in ' + args['identifier'].rsplit('/', 1)[-1], 'id')}"]}
            if args["typeName"] == existing_mod.RESOURCE_GROUP_TYPE else
            {key: placeholder(args["identifier"], key) for key in existing_mod.RESERVATION_PROPERTIES})},
        GET_CLUSTER: lambda args: {
            "name": args["name"], "version": placeholder(args["name"], "version"), "endpoint": placeholder(args["name"], "endpoint"),
            "certificateAuthorities": [{"data": placeholder(args["name"], "certificate")}],
            "vpcConfig": {"clusterSecurityGroupId": placeholder(args["name"], "clusterSecurityGroupId")},
            "kubernetesNetworkConfigs": [{"serviceIpv4Cidr": placeholder(args["name"], "serviceIpv4Cidr")}],
        },
    }


def ordered(value: Any) -> Any:
    """Inputs with every map's keys sorted. They reach the mocks through a protobuf Struct, whose maps have no
    order: protobuf 6 iterates them differently from run to run, and the plan must not change with it."""
    if isinstance(value, dict):
        return {k: ordered(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [ordered(v) for v in value]
    return value


class PlanMocks(pulumi.runtime.Mocks):
    """Answers registrations with the inputs plus placeholders for what AWS assigns,
    and data-source lookups from `lookups`."""

    def __init__(self, lookups: Lookups) -> None:
        self.inputs: dict[tuple[str, str], tuple[dict, bool]] = {}
        self.lookups = lookups

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.inputs[(args.typ, args.name)] = (ordered(args.inputs), args.custom)
        state = dict(args.inputs)
        state.setdefault("name", placeholder(args.name, "name"))
        state.setdefault("arn", placeholder(args.name, "arn"))
        if args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
            state["latestVersion"] = 1
        if args.typ == "aws:eks/nodeGroup:NodeGroup":
            state["resources"] = [{"autoscalingGroups": [{"name": placeholder(args.name, "autoScalingGroup")}]}]
        if args.typ == "aws:fsx/lustreFileSystem:LustreFileSystem":
            state["dnsName"], state["mountName"] = placeholder(args.name, "dnsName"), placeholder(args.name, "mountName")
        if args.typ == "eks:index:Cluster":
            # Plain values only: resource-typed outputs do not survive the mock monitor.
            # pulumi-eks returns EKS's own cluster group when it makes none (nodejs/eks/cluster/cluster.ts).
            own = not args.inputs.get("skipDefaultSecurityGroups")
            state["nodeSecurityGroupId"] = placeholder(args.name, "nodeSecurityGroupId" if own else "vpcConfig.clusterSecurityGroupId")
            state["kubeconfigJson"] = placeholder(args.name, "kubeconfig")
        return placeholder(args.name, "id"), state

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token not in self.lookups:
            raise LookupError(f"the offline plan has no answer for {args.token}")
        return self.lookups[args.token](dict(args.args))


class PlanMonitor(pmocks.MockMonitor):
    """Records each registration with its parent. Resource references are
    switched off: pulumi-eks components are remote, and resource objects
    passed to them hang the default mock monitor."""

    def __init__(self, mocks: PlanMocks):
        super().__init__(mocks)
        self.order: list[tuple[str, str, str, str]] = []  # (urn, parent urn, type, name)
        self.dependencies: dict[str, dict[str, list[str]]] = {}  # urn -> input name -> URNs it depends on
        self.depends_on: dict[str, list[str]] = {}
        self.protected: set[str] = set()  # urns registered with protect

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.order.append((response.urn, request.parent, request.type, request.name))
            self.dependencies[response.urn] = {k: list(v.urns) for k, v in request.propertyDependencies.items() if v.urns}
            self.depends_on[response.urn] = list(request.dependencies)
            if request.protect:
                self.protected.add(response.urn)
        return response

    def GetDeploymentInfo(self, request):
        info = super().GetDeploymentInfo(request)
        features = [f for f in info.supportedFeatures if f != resource_pb2.RESOURCE_MONITOR_FEATURE_RESOURCE_REFERENCES]
        return resource_pb2.DeploymentInfo(supportedFeatures=features)

    def SupportsFeature(self, request):
        if request.id == "resourceReferences":
            return type("SupportsFeatureResponse", (object,), {"hasSupport": False})
        return super().SupportsFeature(request)


@dataclass
class Run:
    resources: list[Registered]
    outputs: dict = field(default_factory=dict)
    error: str | None = None  # the program's clean error (pulumi.RunError), as `pulumi up` would print it

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str, name: str | None = None) -> Registered:
        found = [r for r in self.of_type(typ) if name is None or r.name == name]
        if len(found) != 1:
            raise LookupError(f"{len(found)} resources of type {typ} named {name}")
        return found[0]


def engine_settings(settings: dict[str, Any]) -> dict[str, str]:
    """Stack-file values as the engine passes them: strings, structured values as JSON
    (a time YAML read unquoted, as the text it was)."""
    return {k: v if isinstance(v, str) else json.dumps(v, default=lambda t: t.isoformat()) for k, v in settings.items()}


def run(settings: dict[str, Any], stack: str, lookups: Lookups | None = None) -> Run:
    """Run the program with these config settings (`{"ns:key": value}`); data
    sources answer from `lookups` (default: stand_in_lookups(settings)).

    An invalid config ends the program with pulumi.RunError, as under
    `pulumi up`: the Run then carries its message and whatever was registered.
    """
    mocks = PlanMocks(stand_in_lookups(settings) if lookups is None else lookups)
    monitor = PlanMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(engine_settings(settings))
    captured: dict = {}

    @pulumi.runtime.test
    def program():
        outputs = stack_mod.build(stack_mod.load_config(), stack)
        return pulumi.Output.all(**outputs).apply(captured.update) if outputs else None

    error = None
    try:
        program()
    except pulumi.RunError as err:
        error = str(err)
    names = {urn: name for urn, _, _, name in monitor.order}
    resources = []
    # In URN order: the SDK registers from a thread pool, so the order of registration varies from run to run.
    for urn, parent, typ, name in sorted(monitor.order):
        inputs, custom = mocks.inputs[(typ, name)]
        # The stack itself is not listed: its children count as top level.
        parent_urn = parent if parent in names else None
        resources.append(Registered(typ, name, urn, names.get(parent), parent_urn, custom, inputs, urn in monitor.protected,
                                    monitor.dependencies[urn], monitor.depends_on[urn]))
    return Run(resources, captured, error)
