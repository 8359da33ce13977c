"""The component package for other languages: EfaNetwork, EfaFleet, EfaCluster, EfaStack and Job hosted through Pulumi's
component_provider_host (the plugin's entry point is plugin/__main__.py).

Each hosted component is the stack program's own component (EfaCluster with its fleets, through the stack
program's `build_fleets`; EfaStack the whole program, through `build_plan`), given its arguments as a stack
file's sections (`arguments.py` derives them from the config models) and a few plain ids of other components'
resources. The arguments are validated by the same `config.load` as a stack file, so a bad argument gets the
same key-naming error, before anything is registered; the plan the stack program would make then drives the
same resources with the same inputs.

No `from __future__ import annotations` here: Pulumi's schema inference reads these annotations as types.
"""

import re
from typing import Optional

import pulumi

from ..planning import config as config_mod
from ..planning import plan as plan_mod
from ..planning import data_access, launch
from . import arguments, eks, fleet, job, network
from .stack import build_fleets, build_plan, read_existing

NAME = "efa-infra"
# The release this package is (pyproject.toml's version; a test keeps them equal).
VERSION = "0.2.0"

# Each component: its description, the stack config sections it takes, and its other inputs.
SPECS: dict[str, tuple[str, list[str], list[arguments.Extra]]] = {
    "EfaNetwork": ("An EFA-ready VPC: subnets sized for the fleets, NAT, endpoints, flow logs and the EFA security group "
                   "(or, with network.existing, only the security group in that VPC). Give it the same sections as the "
                   "fleets' components: its subnets are sized for the fleets at nodes.max (on EKS, with their pods' "
                   "addresses) and placed in their AZs and eks.availabilityZones.",
                   ["region", "network", "eks", "fleets", "instanceTypes"], []),
    "EfaFleet": ("One GPU fleet on plain EC2: its placement group, launch template with every EFA device, instance "
                 "profile and Auto Scaling group, in a subnet of an EfaNetwork (or any VPC's private subnet).",
                 ["region", "instanceTypes"],
                 [("fleet", config_mod.FleetConfig, "The fleet, as one entry of a stack file's efa-infra:fleets."),
                  ("subnetId", "pulumi.Input[str]", "The private subnet the fleet runs in (an EfaNetwork's "
                   "fleetSubnetIds[fleet name], or privateSubnetIds[availabilityZone]); it must be in the fleet's "
                   "availabilityZone."),
                  ("securityGroupIds", "pulumi.Input[list[pulumi.Input[str]]]",
                   "Security groups of the fleet's interfaces, the EFA group first (an EfaNetwork's securityGroupId).")]),
    "EfaCluster": ("An EKS cluster whose fleets join it: the control plane, system nodes, add-ons, device plugins (or DRA "
                   "drivers) and operators, and for each fleet its placement group, EFA launch template and managed node "
                   "group (or Karpenter node pool), in the subnets of an EfaNetwork built from the same sections. With "
                   "eks.existing, the fleets join that cluster instead.",
                   ["region", "network", "eks", "fleets", "instanceTypes"],
                   [("vpcId", "pulumi.Input[str]", "The VPC (an EfaNetwork's vpcId)."),
                    ("fleetSubnetIds", "pulumi.Input[dict[str, pulumi.Input[str]]]",
                     "The subnet of each fleet, by fleet name (an EfaNetwork's fleetSubnetIds)."),
                    ("privateSubnetIds", "typing.Optional[pulumi.Input[dict[str, pulumi.Input[str]]]]",
                     "The private subnet of each AZ (an EfaNetwork's privateSubnetIds): a new cluster's control plane "
                     "and system nodes go in those of eks.availabilityZones. Not used with eks.existing."),
                    ("securityGroupId", "pulumi.Input[str]",
                     "The EFA security group (an EfaNetwork's securityGroupId), first on every fleet's interfaces.")]),
    "EfaStack": ("A whole stack, as `pulumi up` of a stack file builds it: its arguments are the stack file's settings "
                 "(aws:region and the efa-infra: keys), and its resources those of the stack program, with the same "
                 "protection (protect, or a stack named prod*). What the other components leave out (a fleet's FSx, "
                 "S3 access on plain EC2, applying jobs' manifests) is built here.",
                 [f.alias or n for n, f in config_mod.StackConfig.model_fields.items()], []),
    "Job": ("A training job rendered for its fleet: on a plain EC2 fleet an SSM Command document that launches it on "
            "every node (and the send-command line that runs it); on an EfaCluster's fleet or a cluster of clusters "
            "(HyperPod, another team's EKS) its Kubernetes manifests, and with S3 access its data role. The resource's "
            "name is the job's name.",
            ["region", "eks", "fleets", "clusters", "instanceTypes"],
            [("job", config_mod.JobConfig, "The job, as one entry of a stack file's efa-infra:jobs."),
             ("runLogGroup", "typing.Optional[pulumi.Input[str]]",
              "For a job on a plain EC2 fleet: the fleet's log group (an EfaFleet's runLogGroup), where the launch's "
              "output goes."),
             ("clusterName", "typing.Optional[pulumi.Input[str]]",
              "For a job with S3 access on an EfaCluster's fleet: the cluster (an EfaCluster's clusterName), where "
              "the job's pods get its data role through EKS Pod Identity.")]),
}
ARGS = arguments.derive(SPECS, __name__ + "_arguments")
EfaNetworkArgs, EfaFleetArgs, EfaClusterArgs, EfaStackArgs, JobArgs = (
    ARGS.EfaNetworkArgs, ARGS.EfaFleetArgs, ARGS.EfaClusterArgs, ARGS.EfaStackArgs, ARGS.JobArgs)


def sections(component: str, given: dict) -> dict:
    """The stack config sections among a component's arguments."""
    return {k: given[k] for k in SPECS[component][1] if k in given}


def stack_config(component: str, given: dict, entry: tuple[str, str] | None = None) -> config_mod.StackConfig:
    """A component's arguments as a validated stack config: its sections, and with `entry` (section, argument) the
    one entry of a list section it takes as an argument (a fleet, a job). Invalid ones raise InputPropertyError
    naming each key as the component's arguments spell it (`fleet.nodes.max`), with the value and what would be valid."""
    document = sections(component, given)
    renames = {}
    if entry is not None:
        section, argument = entry
        document[section] = [given.get(argument)]
        renames = {f"{section}[0]": argument, section: argument}
    try:
        return config_mod.load(document, "arguments")
    except config_mod.ConfigError as err:
        def key(path: str) -> str:
            path = re.sub(r"^(aws|efa-infra):", "", path)
            for stack_key, arg in renames.items():
                path = re.sub(rf"^{re.escape(stack_key)}(?=$|[.\[])", arg, path)
            return path
        problems = [f"{key(p.path)}: {p.message}" for p in err.problems]
        raise pulumi.InputPropertyError(key(err.problems[0].path), "; ".join(problems)) from None


def tags() -> dict[str, str]:
    return {plan_mod.STACK_TAG: pulumi.get_stack()}


class EfaNetwork(network.EfaNetwork):
    """An EFA-ready VPC with its private subnets and the EFA security group."""

    vpc_id: pulumi.Output[str]
    """The VPC's id."""
    private_subnet_ids: dict[str, pulumi.Output[str]]
    """The private subnet of each AZ, by AZ: where fleets go."""
    security_group_id: pulumi.Output[str]
    """The EFA security group (all traffic within itself), for the fleets' interfaces."""
    fleet_subnet_ids: dict[str, pulumi.Output[str]]
    """The subnet each fleet goes in, by fleet name: its AZ's private subnet, or the secondary one for a fleet with
    subnet secondary."""

    def __init__(self, name: str, args: EfaNetworkArgs, opts: Optional[pulumi.ResourceOptions] = None):
        cfg = stack_config("EfaNetwork", dict(args))
        plan = plan_mod.build(cfg)
        existing_vpc_id, *_ = read_existing(plan)
        super().__init__(name, plan, tags(), existing_vpc_id=existing_vpc_id, opts=opts)
        self.fleet_subnet_ids = self.fleet_subnets(plan)


class EfaFleet(fleet.EfaFleet):
    """A GPU fleet on plain EC2 whose nodes attach every EFA device their type has."""

    launch_template_id: pulumi.Output[str]
    """The launch template's id."""
    launch_template_version: pulumi.Output[int]
    """The launch template's latest version."""
    placement_group_name: Optional[pulumi.Output[str]]
    """The cluster placement group (none for placement mode none)."""
    asg_name: Optional[pulumi.Output[str]]
    """The Auto Scaling group that runs the nodes."""
    run_log_group: Optional[pulumi.Output[str]]
    """The log group that holds the output of commands run on the nodes through SSM."""

    def __init__(self, name: str, args: EfaFleetArgs, opts: Optional[pulumi.ResourceOptions] = None):
        given = dict(args)
        cfg = stack_config("EfaFleet", given, ("fleets", "fleet"))
        if cfg.fleets[0].fsx is not None:  # refused rather than left out: the stack program makes it beside the fleet
            raise pulumi.InputPropertyError("fleet.fsx", "fleet.fsx: the package's EfaFleet does not make FSx for Lustre "
                                            "file systems; EfaStack builds a fleet with its file system")
        plan = plan_mod.build(cfg)
        _, _, windows, *_ = read_existing(plan)
        fp = plan.fleets[0]
        groups = given["securityGroupIds"]
        super().__init__(name, fp, pulumi.get_stack(), subnet_id=given["subnetId"],
                         security_group_ids=groups if isinstance(groups, list) else [groups], tags=tags(),
                         region=cfg.region, window=windows.get(fp.name), opts=opts)
        self.launch_template_id = self.launch_template.id
        self.launch_template_version = self.launch_template.latest_version


def pick(ids: pulumi.Input[dict], key: str, argument: str) -> pulumi.Output[str]:
    """One id of a map argument (known or not until the deploy), failing by the argument's name when it lacks it."""
    def get(known: dict) -> str:
        if key not in known:
            raise pulumi.InputPropertyError(argument, f"{argument}: no id for {key!r} (it has {', '.join(sorted(known)) or 'none'})")
        return known[key]
    return pulumi.Output.from_input(ids).apply(get)


class EfaCluster(eks.EfaCluster):
    """An EKS cluster with its EFA fleets as node groups (or Karpenter node pools)."""

    cluster_name: pulumi.Output[str]
    """The cluster's name."""
    kubeconfig: pulumi.Output[str]
    """A kubeconfig for the cluster (secret), for a kubernetes provider that applies jobs' manifests."""
    node_security_group_id: pulumi.Output[str]
    """EKS's cluster security group, which the control plane and every node carry."""
    node_role_arn: pulumi.Output[str]
    """The role of the fleets' nodes."""
    launch_template_ids: dict[str, pulumi.Output[str]]
    """Each node group fleet's EFA launch template, by fleet name (Karpenter's fleets have an EC2NodeClass instead)."""
    placement_group_names: dict[str, pulumi.Output[str]]
    """Each fleet's cluster placement group, by fleet name (none for placement mode none)."""

    def __init__(self, name: str, args: EfaClusterArgs, opts: Optional[pulumi.ResourceOptions] = None):
        given = dict(args)
        cfg = stack_config("EfaCluster", given)
        problems = []
        if not cfg.eks.enabled:
            problems.append("eks.enabled: false, but an EfaCluster is an EKS cluster: set it true (fleets on plain EC2 "
                            "are EfaFleets)")
        for argument, wanted in (("fleetSubnetIds", [f.name for f in cfg.fleets]),
                                 ("privateSubnetIds", [] if cfg.eks.existing else cfg.eks.availability_zones)):
            known = given.get(argument)
            if wanted and known is None:
                problems.append(f"{argument}: required, with ids for {', '.join(wanted)}")
            elif isinstance(known, dict) and (missing := [w for w in wanted if w not in known]):
                problems.append(f"{argument}: no id for {', '.join(missing)} (it has {', '.join(sorted(known)) or 'none'})")
        if problems:
            raise pulumi.InputPropertyError(problems[0].split(":")[0], "; ".join(problems))
        plan = plan_mod.build(cfg)
        _, existing_cluster, windows, _ = read_existing(plan)
        stack = pulumi.get_stack()
        cluster_subnets = {} if cfg.eks.existing else {
            az: pick(given["privateSubnetIds"], az, "privateSubnetIds") for az in sorted(cfg.eks.availability_zones)}
        super().__init__(name, plan, stack, cluster_subnets, given["vpcId"], tags(), existing=existing_cluster, opts=opts)
        made = build_fleets(plan, stack, tags(), vpc_id=given["vpcId"],
                            fleet_subnet_ids={f.name: pick(given["fleetSubnetIds"], f.name, "fleetSubnetIds") for f in cfg.fleets},
                            efa_group_id=given["securityGroupId"], cluster=self, windows=windows,
                            parent=pulumi.ResourceOptions(parent=self))
        # The name, carrying the cluster (or a joined one's access entry) as its dependency, which the engine records
        # for what uses it (a Job's pod identity association): created after the cluster, deleted before it.
        self.cluster_name = pulumi.Output.all(self.name, *[r.urn for r in self.ready]).apply(lambda v: v[0])
        self.node_role_arn = self.node_role.arn
        self.launch_template_ids = {n: f.launch_template.id for n, f in made.fleets.items() if f.launch_template is not None}
        self.placement_group_names = {n: f.placement_group_name for n, f in made.fleets.items()
                                      if f.placement_group_name is not None}


class EfaStack(pulumi.ComponentResource):
    """Everything a stack file describes, in one component."""

    vpc_id: Optional[pulumi.Output[str]]
    """The VPC's id (none for a stack of jobs only)."""
    private_subnet_ids: Optional[dict[str, pulumi.Output[str]]]
    """The private subnet of each AZ, by AZ."""
    security_group_id: Optional[pulumi.Output[str]]
    """The EFA security group."""
    cluster_name: Optional[pulumi.Output[str]]
    """The EKS cluster's name (with eks.enabled)."""
    kubeconfig: Optional[pulumi.Output[str]]
    """A kubeconfig for the EKS cluster (secret)."""
    launch_template_ids: Optional[dict[str, pulumi.Output[str]]]
    """Each fleet's EFA launch template, by fleet name (not Karpenter's fleets)."""
    placement_group_names: Optional[dict[str, pulumi.Output[str]]]
    """Each fleet's cluster placement group, by fleet name."""
    auto_scaling_group_names: Optional[dict[str, pulumi.Output[str]]]
    """Each plain EC2 fleet's Auto Scaling group, by fleet name."""
    file_system_ids: Optional[dict[str, pulumi.Output[str]]]
    """Each fleet's FSx for Lustre file system, by fleet name."""
    job_runs: Optional[dict[str, pulumi.Output[str]]]
    """Each job on a plain EC2 fleet: the aws ssm send-command line that launches it on every node, by job name."""
    job_manifests: Optional[dict[str, pulumi.Output[str]]]
    """Each job on a cluster: its Kubernetes manifests as one multi-document YAML text, by job name."""

    def __init__(self, name: str, args: EfaStackArgs, opts: Optional[pulumi.ResourceOptions] = None):
        cfg = stack_config("EfaStack", dict(args))
        plan = plan_mod.build(cfg)
        found = read_existing(plan)  # before anything is registered: a missing VPC or cluster creates nothing
        super().__init__("efa-infra:index:EfaStack", name, None, opts)
        out = build_plan(plan, found, pulumi.get_stack(), parent=pulumi.ResourceOptions(parent=self))
        self.vpc_id, self.private_subnet_ids = out.get("vpcId"), out.get("privateSubnetIds")
        self.security_group_id, self.cluster_name, self.kubeconfig = out.get("securityGroupId"), out.get("clusterName"), out.get("kubeconfig")
        self.launch_template_ids = {n: t["id"] for n, t in out.get("launchTemplates", {}).items()}
        self.placement_group_names = out.get("placementGroups")
        self.auto_scaling_group_names = out.get("autoScalingGroups")
        self.file_system_ids = {n: f["id"] for n, f in out.get("fileSystems", {}).items()}
        jobs = out.get("jobs", {})
        self.job_runs = {n: j["run"] for n, j in jobs.items() if "run" in j}
        self.job_manifests = {n: pulumi.Output.from_input(launch.manifests_yaml(j["manifests"])) for n, j in jobs.items()
                              if "manifests" in j}
        self.register_outputs({k: getattr(self, k) for k in EfaStack.__annotations__})


class Job(job.Job):
    """A training job's launch artifacts, rendered for its fleet or cluster."""

    ssm_document: Optional[pulumi.Output[str]]
    """Plain EC2: the SSM Command document that launches the job on a node."""
    run: Optional[pulumi.Output[str]]
    """Plain EC2: the aws ssm send-command line that runs the document on every node of the fleet."""
    log_group: Optional[pulumi.Output[str]]
    """Plain EC2: the log group that holds every node's output."""
    manifests: Optional[pulumi.Output[str]]
    """On a cluster: the job's Kubernetes manifests, as one multi-document YAML text for kubectl apply -f."""

    def __init__(self, name: str, args: JobArgs, opts: Optional[pulumi.ResourceOptions] = None):
        given = dict(args)
        cfg = stack_config("Job", given, ("jobs", "job"))
        spec = cfg.jobs[0]
        problems = []
        if spec.name != name:
            problems.append(f"job.name: {spec.name!r}, but the resource is named {name!r}: name the resource as the job")
        if spec.apply:
            problems.append("job.apply: the package renders manifests and leaves applying them to the program "
                            "(its kubernetes provider); set apply false")
        if launch.job_plan(cfg, spec).target == "ec2":
            if given.get("runLogGroup") is None:
                problems.append("runLogGroup: a job on a plain EC2 fleet needs its fleet's log group (EfaFleet's runLogGroup)")
            if data_access.job_policy(cfg, spec) is not None:
                # The stack program grants it on the fleet's node role, which the package's EfaFleet makes without it.
                problems.append("job.s3: on a plain EC2 fleet a job's S3 access goes on the fleet's node role, which the "
                                "package's EfaFleet does not grant; EfaStack builds the fleet with the job's access")
        elif launch.job_plan(cfg, spec).service_account and given.get("clusterName") is None:
            problems.append("clusterName: a job with S3 access on an EKS fleet needs its cluster (EfaCluster's clusterName), "
                            "where its pods get the job's data role")
        if problems:
            raise pulumi.InputPropertyError(problems[0].split(":")[0], "; ".join(problems))
        super().__init__(spec, cfg, pulumi.get_stack(), tags=tags(), run_log_group=given.get("runLogGroup"),
                         cluster_name=given.get("clusterName"), opts=opts)
        self.ssm_document = self.outputs.get("ssmDocument")
        self.run = self.outputs.get("run")
        self.log_group = self.outputs.get("logGroup")
        manifests = self.outputs.get("manifests")
        self.manifests = None if manifests is None else pulumi.Output.from_input(launch.manifests_yaml(manifests))


COMPONENTS = [EfaNetwork, EfaFleet, EfaCluster, EfaStack, Job]


def main() -> None:
    from pulumi.provider.experimental import component_provider_host

    component_provider_host(COMPONENTS, NAME, version=VERSION)
