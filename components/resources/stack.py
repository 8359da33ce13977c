"""Wires the components from a validated stack config: what `pulumi up` runs.

The config is read and validated in full, and existing resources it names
are read and checked, before the first resource is registered: an invalid
stack creates nothing.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from datetime import datetime, timezone

import pulumi
import pulumi.runtime.config as runtime_config

from ..planning import capacity_window, data_access
from ..planning import config as config_mod
from ..planning import existing as existing_mod
from ..planning import plan as plan_mod
from ..planning.capacity_window import Schedule
from .job import Job


def settings_from_engine() -> dict:
    """Every config value the engine handed the program, as `{"ns:key": value}`."""
    return {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}


def load_config() -> config_mod.StackConfig:
    """The stack's config as `pulumi up` sees it; invalid config ends the run
    with the list of problems and no Python traceback."""
    try:
        return config_mod.load_settings(settings_from_engine(), f"stack {pulumi.get_stack()}")
    except config_mod.ConfigError as err:
        raise pulumi.RunError(str(err)) from None


def read_reservations(f: config_mod.FleetConfig) -> list[existing_mod.ReservationFacts]:
    """The On-Demand Capacity Reservations a fleet targets (its one, or each in its resource group),
    read through AWS Cloud Control: pulumi-aws has no data source for them."""
    import pulumi_aws as aws

    def read(type_name: str, identifier: str) -> dict:
        return json.loads(aws.cloudcontrol.get_resource(type_name=type_name, identifier=identifier).properties or "{}")

    c = f.capacity
    ids = [c.reservation_id] if c.reservation_id else existing_mod.reservation_ids_of_group(
        read(existing_mod.RESOURCE_GROUP_TYPE, c.reservation_group_arn).get("Resources") or [])
    return [existing_mod.ReservationFacts.of(rid, read(existing_mod.RESERVATION_TYPE, rid)) for rid in ids]


def read_existing(plan: plan_mod.StackPlan) -> tuple[str | None, existing_mod.ClusterFacts | None, dict[str, Schedule],
                                                     dict[str, list[existing_mod.ReservationFacts]]]:
    """Read the VPC, subnets, cluster, Capacity Blocks and capacity reservations the config names
    (pulumi-aws data sources) and check them against the plan; raises pulumi.RunError naming each
    problem. Returns the VPC id, the cluster, each Capacity Block fleet's window and each
    reservation fleet's reservations."""
    cfg = plan.config
    if not (cfg.network.existing or cfg.eks.existing or any(f.capacity.type != "on-demand" for f in cfg.fleets)):
        return None, None, {}, {}  # nothing to read: pulumi-aws stays unloaded for a stack of jobs only
    import pulumi_aws as aws

    problems: list = []
    vpc_id = cluster = None
    windows: dict[str, Schedule] = {}
    reservations: dict[str, list[existing_mod.ReservationFacts]] = {}
    now = datetime.now(timezone.utc)
    for i, f in enumerate(cfg.fleets):
        c = f.capacity
        if c.type == "reservation":
            reservations[f.name] = read_reservations(f)
            problems.extend(existing_mod.check_reservations(i, f, reservations[f.name], now))
            continue
        if c.type != "capacity-block":
            continue
        at = config_mod.key_path(("fleets", i, "capacity", "reservationId"))
        try:
            if c.start is not None:  # stated in the config, and checked there
                windows[f.name] = capacity_window.schedule(c.start, c.end, now)
                continue
            block = aws.ec2.get_capacity_block_reservation(id=c.reservation_id)
            windows[f.name] = capacity_window.schedule_of_reservation(block.start_date, block.end_date, now)
        except capacity_window.WindowOver as exc:
            problems.append(config_mod.Problem(at, f"Capacity Block {c.reservation_id}: {exc}"))
            continue
        for key, got, want in (("instanceType", block.instance_type, f.instance_type),
                               ("availabilityZone", block.availability_zone, f.availability_zone)):
            if got and got != want:
                problems.append(config_mod.Problem(config_mod.key_path(("fleets", i, key)),
                                                   f"{want!r}, but Capacity Block {c.reservation_id} is for {got!r}"))
        if block.instance_count and f.nodes.maximum > block.instance_count:
            problems.append(config_mod.Problem(config_mod.key_path(("fleets", i, "nodes", "max")),
                                               f"{f.nodes.maximum} nodes, but block {c.reservation_id} holds {block.instance_count}"))
    if cfg.network.existing:
        ex = cfg.network.existing
        vpcs = (aws.ec2.get_vpcs(filters=[aws.ec2.GetVpcsFilterArgs(name="vpc-id", values=[ex.vpc_id])]) if ex.vpc_id
                else aws.ec2.get_vpcs(tags={"Name": ex.vpc_name}))
        vpc_id, found = existing_mod.find_vpc(ex, list(vpcs.ids or []), cfg.region)
        problems.extend(found)
        wanted = sorted(set(ex.private_subnet_ids.values()))
        listed = set(aws.ec2.get_subnets(filters=[aws.ec2.GetSubnetsFilterArgs(name="subnet-id", values=wanted)]).ids or [])
        problems.extend(existing_mod.missing_subnets(ex, listed, cfg.region))
        facts = {}
        for subnet_id in sorted(listed & set(wanted)):
            s = aws.ec2.get_subnet(id=subnet_id)
            facts[subnet_id] = existing_mod.SubnetFacts(s.id, s.vpc_id, s.availability_zone, bool(s.map_public_ip_on_launch),
                                                        int(s.available_ip_address_count))
        problems.extend(existing_mod.check_subnets(plan, vpc_id, facts))
    if cfg.eks.existing:
        name = cfg.eks.existing.cluster_name
        missing = existing_mod.missing_cluster(name, list(aws.eks.get_clusters().names or []), cfg.region)
        problems.extend(missing)
        if not missing:
            cluster = existing_mod.ClusterFacts.of(aws.eks.get_cluster(name=name))
            if plan.pod_identity:
                try:
                    aws.eks.get_addon(addon_name=data_access.POD_IDENTITY_AGENT, cluster_name=name)
                except Exception as exc:  # EKS answers ResourceNotFoundException for a cluster without it
                    problems.extend(existing_mod.missing_pod_identity_agent(plan, name, str(exc).strip().splitlines()[-1]))
    if problems:
        raise pulumi.RunError(str(config_mod.ConfigError(problems, f"stack {pulumi.get_stack()}")))
    return vpc_id, cluster, windows, reservations


def protect_kinds(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
    """Marks the kinds that `diff` guards (VPC, subnets, NAT gateways, the cluster, node groups, file systems) protected."""
    if args.type_ not in plan_mod.PROTECTED_TYPES:
        return None
    return pulumi.ResourceTransformationResult(args.props, pulumi.ResourceOptions.merge(args.opts, pulumi.ResourceOptions(protect=True)))


@dataclasses.dataclass
class Fleets:
    """What `build_fleets` made, by fleet name: each fleet and each fleet's file system."""
    fleets: dict
    file_systems: dict

    def outputs(self, windows: dict[str, Schedule]) -> dict:
        fleets, file_systems = self.fleets, self.file_systems
        outputs: dict = {"placementGroups": {n: f.placement_group_name for n, f in fleets.items() if f.placement_group_name is not None}}
        outputs["launchTemplates"] = {
            n: {"id": f.launch_template.id, "version": f.launch_template.latest_version} for n, f in fleets.items()
            if f.launch_template is not None
        }
        outputs["autoScalingGroups"] = {n: f.asg_name for n, f in fleets.items() if f.asg_name is not None}
        if windows:
            outputs["capacityWindows"] = {n: dataclasses.asdict(w) for n, w in windows.items()}
        if file_systems:
            outputs["fileSystems"] = {n: {"id": fs.file_system.id, "dnsName": fs.file_system.dns_name,
                                          "mountName": fs.file_system.mount_name, "mountPath": fs.mount_path}
                                      for n, fs in file_systems.items()}
        return outputs


def build_fleets(plan: plan_mod.StackPlan, stack: str, tags: dict[str, str], *, vpc_id: pulumi.Input[str],
                 fleet_subnet_ids: dict[str, pulumi.Input[str]], efa_group_id: pulumi.Input[str], cluster: typing.Any,
                 windows: dict[str, Schedule], guarded: pulumi.ResourceOptions | None = None,
                 parent: pulumi.ResourceOptions | None = None) -> Fleets:
    """The fleets in their subnets (`fleet_subnet_ids`, by fleet name) with their file systems, and on the EKS
    `cluster` (an eks.EfaCluster, or None) their node groups or Karpenter. Used by the stack program and by the
    component package's EfaCluster (`parent`: that component). `guarded`: the options of the kinds `diff`
    guards, which the stack program marks protected."""
    cfg = plan.config
    from .fleet import EfaFleet
    from .fsx import FsxLustre

    guarded = pulumi.ResourceOptions.merge(guarded, parent)
    security_groups = [efa_group_id]
    if cluster is not None:
        # A launch template's security groups replace EKS's own: add EKS's cluster group, which the control
        # plane and the system nodes carry (CoreDNS, webhooks), beside the EFA group.
        security_groups.append(cluster.node_security_group_id)
    karpenter = None
    if cluster is not None and any(fp.config.provisioner == "karpenter" for fp in plan.fleets):
        from .karpenter import Karpenter

        karpenter = Karpenter("karpenter", plan, cluster.name, cluster.node_role, cluster.provider, cluster.base, tags,
                              opts=parent)
        karpenter.overlays([fp for fp in plan.fleets if fp.config.provisioner == "karpenter"], cluster.provider)
    fleets: dict = {}
    file_systems: dict = {}
    for fp in plan.fleets:
        subnet_id = fleet_subnet_ids[fp.name]
        groups = security_groups
        if fp.config.fsx is not None:
            # In the fleet's subnet; its group goes on the fleet's nodes, which it admits to Lustre (and EFA).
            fs = file_systems[fp.name] = FsxLustre(fp.name, fp.config.fsx, fp.fsx_efa, vpc_id, subnet_id, tags, opts=guarded)
            groups = [*security_groups, fs.security_group_id]
        fleets[fp.name] = EfaFleet(fp.name, fp, stack, subnet_id=subnet_id, security_group_ids=groups, tags=tags,
                                   region=cfg.region,
                                   cluster_join=cluster.node_join if cluster is not None and fp.config.ami else None,
                                   window=windows.get(fp.name), file_system=file_systems.get(fp.name),
                                   data_policy=None if fp.on_eks else data_access.fleet_policy(cfg, fp.name), opts=parent)
        if karpenter is not None and fp.config.provisioner == "karpenter":
            # The same security groups as the node groups' launch templates carry.
            karpenter.fleet(fp, stack, cluster.node_role, subnet_id, groups, fleets[fp.name].placement_group_name,
                            cluster.provider)
        elif cluster is not None:
            cluster.node_group(fp, fleets[fp.name].launch_template, subnet_id, tags, window=windows.get(fp.name))
        if cluster is not None and fp.name in file_systems:
            cluster.file_system_volume(fp, file_systems[fp.name].file_system)
    return Fleets(fleets, file_systems)


def build(cfg: config_mod.StackConfig, stack: str) -> dict[str, pulumi.Output]:
    """Register the stack's resources; returns the stack outputs."""
    plan = plan_mod.build(cfg)
    return build_plan(plan, read_existing(plan), stack)


def build_plan(plan: plan_mod.StackPlan, found: tuple, stack: str, parent: pulumi.ResourceOptions | None = None) -> dict:
    """Register the resources of a plan whose existing resources were read (`found`: what read_existing returned),
    under `parent` (the component package's EfaStack) or at the top of the stack; returns the stack outputs."""
    cfg = plan.config
    existing_vpc_id, existing_cluster, windows, reservations = found
    tags = {plan_mod.STACK_TAG: stack}
    outputs: dict = {}
    cluster = None
    made = Fleets({}, {})
    # Transformations reach every child of a component: only the guarded kinds are marked.
    guarded = pulumi.ResourceOptions(transformations=[protect_kinds]) if plan_mod.protected(cfg, stack) else None
    guarded = pulumi.ResourceOptions.merge(guarded, parent)
    if plan.fleets:
        # pulumi-aws loads only for stacks that create AWS resources: a stack of jobs for another team's cluster does not.
        from .network import EfaNetwork

        net = EfaNetwork("efa", plan, tags, existing_vpc_id=existing_vpc_id, opts=guarded)
        outputs.update(vpcId=net.vpc_id, privateSubnetIds=net.private_subnet_ids, securityGroupId=net.security_group_id)
        if cfg.eks.enabled:
            from .eks import EfaCluster  # pulumi-eks and pulumi-kubernetes load only for EKS stacks

            # The cluster's subnets are those of its named AZs only: a fleet in a new AZ leaves them alone.
            cluster_subnets = {az: net.private_subnet_ids[az] for az in sorted(cfg.eks.availability_zones)}
            cluster = EfaCluster("eks", plan, stack, cluster_subnets, net.vpc_id, tags, existing=existing_cluster, opts=guarded)
            outputs.update(clusterName=cluster.name, kubeconfig=cluster.kubeconfig)
        made = build_fleets(plan, stack, tags, vpc_id=net.vpc_id, fleet_subnet_ids=net.fleet_subnets(plan),
                            efa_group_id=net.security_group_id, cluster=cluster, windows=windows, guarded=guarded,
                            parent=parent)
        outputs.update(made.outputs(windows))
        if reservations:
            outputs["capacityReservations"] = {n: [dataclasses.asdict(r) for r in rs] for n, rs in reservations.items()}
    if cfg.jobs:
        outputs["jobs"] = {
            j.name: Job(j, cfg, stack, k8s_provider=cluster.provider if cluster else None, tags=tags,
                        namespaces=cluster.namespaces if cluster else None,
                        run_log_group=made.fleets[j.fleet].run_log_group if j.fleet in made.fleets else None,
                        cluster_name=cluster.name if cluster else None,
                        cluster_ready=cluster.ready if cluster else None, opts=parent).outputs for j in cfg.jobs
        }
    return outputs


def main() -> None:
    cfg = load_config()
    for key, value in build(cfg, pulumi.get_stack()).items():
        pulumi.export(key, value)
