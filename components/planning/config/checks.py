"""The checks one field cannot make alone: against the catalog (EFA, placement, EKS's AMI types and rules)
and across fields and sections (names, AZs, jobs against their fleets and clusters, Capacity Block windows)."""

from __future__ import annotations

import difflib
from datetime import date, datetime, timezone

from .. import capacity_window, deployer, devices, efa, eks_rules, eks_versions, zones
from ..bootstrap import DROP_INS_SINCE, HUGEPAGES_MIB, POD_MEMORY_SHARE, pod_memory_gib
from ..catalog import Catalog, InstanceType, regions
from .errors import key_path
from .problems import Problem
from .fleets import FleetConfig
from .jobs import JobConfig
from .sizing import subnet_key_checks
from .stack import StackConfig

TRANSPORT_LOGGING = {"NCCL_DEBUG", "NCCL_DEBUG_SUBSYS"}  # what the transport check needs NCCL to print
JOB_OPERATORS = {"trainjob": "trainer", "pytorchjob": "training-operator", "mpijob": "mpi-operator"}  # job kind -> its operator
# Trainer v2.3's torch plugin sets these and the master port itself (kubeflow/trainer@v2.3.0 pkg/constants/constants.go).
TRAINJOB_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
TRAINJOB_PORT = 29500



def fleet_checks(i: int, f: FleetConfig, cat: Catalog) -> list[Problem]:
    at = lambda key: key_path(("fleets", i, *key.split(".")))  # noqa: E731
    out: list[Problem] = []
    itype = cat.get(f.instance_type)  # known: checked with the fields
    if f.efa and not itype.efa_supported:
        family = f.instance_type.split(".")[0]
        alike = [t.name for t in cat.efa_types() if t.name.split(".")[0] == family]  # every size, smallest first
        hint = f"EFA sizes of {family}: {', '.join(alike)}" if alike else "python -m components types lists them"
        out.append(Problem(at("efa"), f"{f.instance_type} has no EFA device; set efa: false or pick an EFA type ({hint})"))
    elif f.efa:
        try:
            efa.interfaces(itype, f.efa_layout)
        except efa.EfaLayoutError as exc:
            out.append(Problem(at("efaLayout"), str(exc)))
    mode, cap = f.placement_mode, f.capacity.type
    if mode == "cluster" and "cluster" not in itype.placement_strategies:
        out.append(Problem(at("placement.mode"), f"{f.instance_type} does not support cluster placement groups; use none or existing"))
    if mode == "existing" and not f.placement.group_name:
        out.append(Problem(at("placement.groupName"), "required when placement.mode is existing"))
    if mode != "existing" and f.placement.group_name:
        out.append(Problem(at("placement.groupName"), f"only used with placement.mode existing (mode is {mode})"))
    out.extend(_reservation_checks(f, at))
    out.extend(_window_checks(f, at))
    if f.ami_release is not None and f.ami is None:
        out.append(Problem(at("amiRelease"), "only used with a pinned ami: EKS's own AMIs are recent"))
    if cap != "on-demand" and mode == "cluster":
        out.append(Problem(
            at("placement.mode"),
            f"'cluster' creates a new placement group, which conflicts with capacity.type {cap}: the reservation "
            "decides placement and a new group can fail with InsufficientInstanceCapacity. Use none, or existing "
            "with the group the reservation was made in",
        ))
    return out


def _reservation_checks(f: FleetConfig, at) -> list[Problem]:
    """Which reservation a fleet targets, and the keys only a reservation takes."""
    c, cap = f.capacity, f.capacity.type
    out = []
    if cap == "on-demand":
        for key, value in (("reservationId", c.reservation_id), ("reservationGroupArn", c.reservation_group_arn)):
            if value:
                out.append(Problem(at(f"capacity.{key}"), "given, but capacity.type is on-demand; set type reservation or capacity-block"))
    elif cap == "capacity-block" and c.reservation_group_arn:
        out.append(Problem(at("capacity.reservationGroupArn"), "only used with capacity.type reservation; a block is named by reservationId"))
    elif cap == "reservation" and c.reservation_id and c.reservation_group_arn:
        out.append(Problem(at("capacity.reservationGroupArn"), "give reservationId or reservationGroupArn, not both"))
    if cap != "on-demand" and not c.reservation_id and not (cap == "reservation" and c.reservation_group_arn):
        either = " or reservationGroupArn" if cap == "reservation" else ""
        out.append(Problem(at("capacity.reservationId"), f"required for capacity.type {cap} (cr-...){either}"))
    if cap != "reservation":
        for key, value in (("neededUntil", c.needed_until), ("instanceMatch", c.instance_match if "instance_match" in c.model_fields_set else None)):
            if value is not None:
                out.append(Problem(at(f"capacity.{key}"), f"only used with capacity.type reservation (type is {cap})"))
    if c.needed_until is not None and c.needed_until <= datetime.now(timezone.utc):
        out.append(Problem(at("capacity.neededUntil"), f"{capacity_window.aws_time(c.needed_until)} has passed"))
    return out


def _provisioner_checks(cfg: StackConfig, fleets: list[tuple[int, FleetConfig]]) -> list[Problem]:
    """Karpenter runs on a cluster the stack creates, and takes only what its EC2NodeClass can say."""
    out = []
    for i, f in fleets:
        if f.provisioner != "karpenter":
            continue
        at = lambda key: key_path(("fleets", i, *key.split(".")))  # noqa: E731
        if not cfg.eks.enabled or cfg.eks.existing is not None:
            where = "eks.enabled is false" if not cfg.eks.enabled else "the stack joins eks.existing"
            out.append(Problem(at("provisioner"), f"karpenter is installed on a cluster the stack creates, but {where}; use node-group"))
        if f.efa and f.efa_layout != "ena-primary":
            out.append(Problem(at("efaLayout"), f"{f.efa_layout!r}: Karpenter's EC2NodeClass takes only interface and efa-only "
                                                "interfaces (karpenter-provider-aws v1.11 and later); use ena-primary"))
        if f.nodes.min or f.nodes.desired:
            out.append(Problem(at("nodes"), f"min {f.nodes.min}, desired {f.nodes.desired}: Karpenter launches nodes for pending pods "
                                            "and removes empty ones, so it keeps none running; set min and desired to 0 "
                                            "(nodes.max bounds the fleet)"))
        if f.auto_repair is not None:
            out.append(Problem(at("autoRepair"), "node auto repair is a managed node group's; a Karpenter fleet's nodes are "
                                                 "replaced when the boot check taints them or they fail; remove the key"))
        if f.capacity.reservation_group_arn:
            out.append(Problem(at("capacity.reservationGroupArn"), "Karpenter selects reservations by id or tags, not by resource "
                                                                  "group; give reservationId, or use provisioner node-group"))
    return out


def _window_checks(f: FleetConfig, at) -> list[Problem]:
    """A Capacity Block's window, and the size of a block or reservation, when the config states them."""
    c = f.capacity
    out = []
    if c.instance_count is not None:
        if c.type == "on-demand":
            out.append(Problem(at("capacity.instanceCount"), "only used with capacity.type reservation or capacity-block (type is on-demand)"))
        elif f.nodes.maximum > c.instance_count:
            held = "the block holds" if c.type == "capacity-block" else "the reservation holds"
            out.append(Problem(at("nodes.max"), f"{f.nodes.maximum} nodes, but {held} {c.instance_count} instances"))
    given = [k for k, v in (("start", c.start), ("end", c.end)) if v is not None]
    if c.type != "capacity-block":
        return out + [Problem(at(f"capacity.{k}"), f"only used with capacity.type capacity-block (type is {c.type})") for k in given]
    if (c.start is None) != (c.end is None):
        missing = "end" if c.end is None else "start"
        out.append(Problem(at(f"capacity.{missing}"), "give the block's start and end together, or neither (read at deploy time)"))
    elif c.start is not None:
        try:
            capacity_window.schedule(c.start, c.end, datetime.now(timezone.utc))
        except capacity_window.WindowOver as exc:
            out.append(Problem(at("capacity.end"), str(exc)))
    return out


def stack_checks(cfg: StackConfig, fleets: list[tuple[int, FleetConfig]], jobs: list[tuple[int, JobConfig]],
                  raw_fleet_names: set[str]) -> list[Problem]:
    out: list[Problem] = []
    if cfg.region not in regions():
        near = difflib.get_close_matches(cfg.region, regions(), n=2)
        out.append(Problem("aws:region", f"{cfg.region!r} is not an AWS region" + (f"; did you mean {', '.join(near)}?" if near else "")))
    seen: dict[str, int] = {}
    for i, f in fleets:
        if f.name in seen:
            out.append(Problem(key_path(("fleets", i, "name")), f"{f.name!r} is already the name of fleets[{seen[f.name]}]"))
        seen.setdefault(f.name, i)
    for k, az in enumerate(cfg.network.availability_zones):
        if why := zones.refusal(az, cfg.region):
            out.append(Problem(key_path(("network", "availabilityZones", k)), why))
    existing = cfg.network.existing
    if existing is not None:
        for az in existing.private_subnet_ids:
            if why := zones.refusal(az, cfg.region):
                out.append(Problem(key_path(("network", "existing", "privateSubnetIds", az)), why))
        for i, f in fleets:
            if f.availability_zone not in existing.private_subnet_ids:
                out.append(Problem(key_path(("fleets", i, "availabilityZone")),
                                   f"no subnet for {f.availability_zone} in network.existing.privateSubnetIds "
                                   f"(has {', '.join(sorted(existing.private_subnet_ids))})"))
    if cfg.eks.existing is not None and not cfg.eks.enabled:
        out.append(Problem(key_path(("eks", "enabled")), "must be true to join eks.existing"))
    if cfg.eks.existing is not None and cfg.eks.node_monitoring_agent:
        out.append(Problem(key_path(("eks", "nodeMonitoringAgent")),
                           "a cluster this stack joins keeps its own add-ons: install the agent where the cluster is "
                           "managed, or remove the key"))
    out.extend(subnet_key_checks(cfg, fleets))
    out.extend(_provisioner_checks(cfg, fleets))
    cat = cfg.catalog()
    out.extend(deployer.problems(cfg))
    if not cfg.eks.enabled:
        out.extend(Problem(key_path(("fleets", i, "amiRelease")), "only used on EKS (eks.enabled), where the boot check "
                           "taints through nodeadm; on EC2 a failing node marks itself unhealthy on any AMI")
                   for i, f in fleets if f.ami_release is not None)
    if cfg.eks.enabled:
        out.extend(_eksfleet_checks(fleets, cat))
        out.extend(dra_checks(cfg, cat))
        nodes = cfg.eks.node_group_version
        # A joined cluster's version is read only at deploy time: EKS itself refuses a node group newer than it.
        lag = nodes and cfg.eks.existing is None and eks_versions.node_group_problem(nodes, cfg.eks.version)
        if lag:
            out.append(Problem(key_path(("eks", "nodeGroupVersion")), f"{lag} ({key_path(('eks', 'version'))})"))
    clusters = {c.name: c for c in cfg.clusters}
    for k, c in enumerate(cfg.clusters):
        if c.name in seen:
            out.append(Problem(key_path(("clusters", k, "name")), f"{c.name!r} is already the name of fleets[{seen[c.name]}]"))
        if c.ec2_type in cat and not cat.get(c.ec2_type).efa_supported:
            out.append(Problem(key_path(("clusters", k, "instanceType")), f"{c.instance_type} has no EFA device; name the cluster's EFA node type"))
    # A name two fleets share is reported above: jobs on it are not checked against either.
    known = {f.name: f for _, f in fleets if sum(g.name == f.name for _, g in fleets) == 1}
    for j, job in jobs:
        if job.fleet not in raw_fleet_names and job.fleet not in clusters:
            out.append(Problem(key_path(("jobs", j, "fleet")),
                               f"no fleet or cluster named {job.fleet!r}; fleets: {', '.join(sorted(raw_fleet_names)) or 'none'}"
                               + (f"; clusters: {', '.join(sorted(clusters))}" if clusters else "")))
        if (cfg.eks.enabled or job.fleet in clusters) and not job.image:
            out.append(Problem(key_path(("jobs", j, "image")), "required for a job on Kubernetes: the container image to run"))
        on_k8s = job.fleet in clusters or (cfg.eks.enabled and job.fleet in known)
        nodes = job.nodes or (clusters[job.fleet].nodes if job.fleet in clusters else known[job.fleet].nodes.desired if job.fleet in known else 1)
        if on_k8s and job.launcher == "nccl-tests" and job.kind == "indexed-job" and nodes > 1:
            out.append(Problem(key_path(("jobs", j, "kind")),
                               f"nccl-tests across {nodes} nodes needs mpirun to start ranks on the other pods, "
                               "which an indexed Job has no means for: use kind: mpijob"))
        if on_k8s and job.shm_size:
            # Unmanaged clusters' nodes are EFA types: count their hugepages as set aside.
            node_type, efa_node = (clusters[job.fleet].ec2_type, True) if job.fleet in clusters else (known[job.fleet].instance_type, known[job.fleet].efa)
            if node_type in cat:
                out.extend(_shm_checks(j, job.shm_size, cat.get(node_type), efa_node))
        managed = cfg.eks.enabled and cfg.eks.existing is None and job.fleet in known
        if managed and job.namespace != "default" and job.namespace not in cfg.eks.namespaces:
            out.append(Problem(key_path(("jobs", j, "namespace")),
                               f"{job.namespace!r} is not a namespace the stack creates: add it to "
                               f"{key_path(('eks', 'namespaces'))} (it lists {', '.join(cfg.eks.namespaces) or 'none'})"))
        operator = JOB_OPERATORS.get(job.kind)
        if operator and managed and operator not in cfg.eks.operators:
            out.append(Problem(key_path(("jobs", j, "kind")),
                               f"kind {job.kind} needs the {operator} in the cluster: add {operator} to "
                               f"{key_path(('eks', 'operators'))} (it lists {', '.join(cfg.eks.operators) or 'none'})"))
        if job.kind == "trainjob" and job.port != TRAINJOB_PORT:
            out.append(Problem(key_path(("jobs", j, "port")),
                               f"{job.port}: Trainer v2.3 always puts the rendezvous on port {TRAINJOB_PORT} for kind "
                               f"trainjob; leave port out, or use kind pytorchjob or indexed-job"))
        for name in sorted(set(TRAINJOB_ENV) & set(job.env) if job.kind == "trainjob" else ()):
            out.append(Problem(key_path(("jobs", j, "env", name)),
                               "Trainer v2.3 sets this itself for kind trainjob and refuses a TrainJob that sets it"))
        out.extend(_device_request_checks(cfg, j, job, known.get(job.fleet), cat))
        if job.fleet in clusters and job.nodes and job.nodes > clusters[job.fleet].nodes:
            out.append(Problem(key_path(("jobs", j, "nodes")),
                               f"{job.nodes} nodes, but cluster {job.fleet!r} has {clusters[job.fleet].nodes}"))
        if job.efa and job.efa_check and job.nccl_debug == "WARN":
            out.append(Problem(key_path(("jobs", j, "ncclDebug")),
                               "WARN hides the NCCL lines (INFO, subsystems INIT and NET) the EFA transport check reads; "
                               "use INFO, or set the job's efaCheck: false"))
        for name in sorted(TRANSPORT_LOGGING & set(job.env) if job.efa and job.efa_check else ()):
            out.append(Problem(key_path(("jobs", j, "env", name)),
                               f"sets NCCL's logging ({name}={job.env[name]!r}), which the EFA transport check reads: "
                               "use the job's ncclDebug key, or set its efaCheck: false"))
        if job.fleet in known and job.efa and not known[job.fleet].efa:
            out.append(Problem(key_path(("jobs", j, "efa")),
                               f"fleet {job.fleet!r} has efa: false, so its nodes have no EFA device; "
                               "set the job's efa: false (TCP) or enable EFA on the fleet"))
        if job.fleet in known and job.nodes is None and known[job.fleet].provisioner == "karpenter":
            out.append(Problem(key_path(("jobs", j, "nodes")),
                               f"required: fleet {job.fleet!r} is launched by Karpenter and keeps no nodes running "
                               f"(give 1 to {known[job.fleet].nodes.maximum})"))
        if job.fleet in known and job.nodes and job.nodes > known[job.fleet].nodes.maximum:
            out.append(Problem(key_path(("jobs", j, "nodes")),
                               f"{job.nodes} nodes, but fleet {job.fleet!r} has at most {known[job.fleet].nodes.maximum}"))
    return out


def advisories(cfg: StackConfig, today: date | None = None) -> list[Problem]:
    """What a valid config should hear before it is deployed: a cluster it creates on a version in extended support."""
    if not cfg.eks.enabled or cfg.eks.existing is not None:
        return []
    warning = eks_versions.extended_support_warning(cfg.eks.version, today or datetime.now(timezone.utc).date())
    return [Problem(key_path(("eks", "version")), warning)] if warning else []


def _eksfleet_checks(fleets: list[tuple[int, FleetConfig]], cat: Catalog) -> list[Problem]:
    """What EKS would refuse in a fleet's node group (eks_rules), named by the key that causes it."""
    out: list[Problem] = []
    for i, f in fleets:
        at = lambda *key: key_path(("fleets", i, *key))  # noqa: E731
        taints = f.taints or []
        if len(taints) > eks_rules.MAX_TAINTS:
            out.append(Problem(at("taints"), f"{len(taints)} taints; EKS takes at most {eks_rules.MAX_TAINTS} per node group"))
        for k, t in enumerate(taints):
            for field, rule, message in eks_rules.taint_problems(t.key, t.value):
                out.append(Problem(at("taints", k, field), f"{message}; EKS refuses it ({eks_rules.RULES[rule].source})"))
        itype = cat.get(f.instance_type)
        kind = itype.accelerator.kind if itype.accelerator else None
        if f.ami is not None and f.boot_check and (f.ami_release is None or f.ami_release < DROP_INS_SINCE):
            had = f"release {f.ami_release} predates it" if f.ami_release else "its release is not given"
            out.append(Problem(at("amiRelease"),
                               f"the boot check taints a failing node through a nodeadm drop-in, which EKS AMIs read only "
                               f"from release {DROP_INS_SINCE} on (awslabs/amazon-eks-ami PR #2427); {f.ami}: {had}, so "
                               f"a node short of EFA devices would join untainted and take jobs. Give its release "
                               f"({DROP_INS_SINCE} or later, the end of the AMI's name), pin a newer AMI, or set "
                               "bootCheck: false to only log the check"))
        if f.ami is None and eks_rules.ami_type(kind, itype.architecture) is None:
            out.append(Problem(at("instanceType"), f"EKS has no AL2023 AMI type for {kind or 'plain'} {itype.architecture} "
                                                   f"nodes ({f.instance_type}): pin an AMI with ami, or pick another type"))
    return out


def _shm_checks(j: int, shm_size: str, itype: InstanceType, efa_node: bool) -> list[Problem]:
    # A memory-backed /dev/shm counts against the pod's memory: larger than that, the pod is killed once it fills.
    size, unit = int(shm_size[:-2]), shm_size[-2:]
    room = pod_memory_gib(itype.memory_mib, efa_node)
    if size * (1024 if unit == "Gi" else 1) <= room * 1024:
        return []
    hugepages = f", less {HUGEPAGES_MIB // 1024} GiB of hugepages" if efa_node else ""
    return [Problem(key_path(("jobs", j, "shmSize")),
                    f"{shm_size!r} is more than the {room}Gi a pod may use on {itype.name} "
                    f"({itype.memory_mib // 1024} GiB{hugepages}, {POD_MEMORY_SHARE:.0%} of the rest); "
                    f"/dev/shm is memory and counts against it: at most {room}Gi")]


def dra_checks(cfg: StackConfig, cat: Catalog) -> list[Problem]:
    """eks.devices: dra on a cluster the stack creates, at a Kubernetes version every driver it needs supports."""
    if not cfg.eks.enabled or cfg.eks.devices != "dra":
        return []
    at = key_path(("eks", "devices"))
    if cfg.eks.existing is not None:
        return [Problem(at, "dra is for a cluster the stack creates: an existing cluster's device management is its own "
                            "(eks.existing.devicePlugins says whether the stack adds the device plugins)")]
    out = [Problem(key_path(("fleets", i, "provisioner")),
                   f"karpenter launches no node for a pod with resource claims before Karpenter 1.15 (EKS user guide, "
                   f"device-management: DRA with Karpenter), which {key_path(('eks', 'devices'))}: dra gives every job: "
                   "use node-group, or devices: plugins")
           for i, f in enumerate(cfg.fleets) if f.provisioner == "karpenter"]
    kinds = set()
    for f in cfg.fleets:
        if f.instance_type not in cat:
            continue
        itype = cat.get(f.instance_type)
        if f.efa and itype.efa_supported:
            kinds.add("efa")
        if itype.accelerator:
            kinds.add(itype.accelerator.kind)
    drivers = [devices.driver(k) for k in sorted(kinds)]
    needed = max((d.min_kubernetes for d in drivers), default=None)
    if needed and devices.version(cfg.eks.version) < needed:
        which = ", ".join(f"{d.chart[0].rsplit('/', 1)[-1]} {d.chart[2]} ({d.kind}) {'.'.join(map(str, d.min_kubernetes))}"
                          for d in drivers)
        out.append(Problem(at, f"dra needs Kubernetes {'.'.join(map(str, needed))} or newer for these fleets' devices "
                               f"({which}), but {key_path(('eks', 'version'))} is {cfg.eks.version}: raise it, or use "
                               "devices: plugins"))
    return out


def _device_request_checks(cfg: StackConfig, j: int, job: JobConfig, fleet: FleetConfig | None, cat: Catalog) -> list[Problem]:
    """What a job may ask of its nodes' devices: part of a node only through DRA, in whole PCIe groups."""
    out: list[Problem] = []
    dra = cfg.eks.enabled and cfg.eks.devices == "dra" and fleet is not None
    if dra and job.kind == "trainjob":
        out.append(Problem(key_path(("jobs", j, "kind")),
                           "Trainer v2.3 cannot give a TrainJob's pods resource claims (its runtime patches have no "
                           "resourceClaims), which eks.devices: dra needs: use kind pytorchjob or indexed-job"))
    n = job.accelerators_per_node
    if n is None or fleet is None or fleet.instance_type not in cat:
        if n is not None and fleet is None:
            out.append(Problem(key_path(("jobs", j, "acceleratorsPerNode")),
                               "part of a node is for fleets of a cluster the stack creates with eks.devices: dra"))
        return out
    itype = cat.get(fleet.instance_type)
    at = key_path(("jobs", j, "acceleratorsPerNode"))
    have = itype.accelerator.count if itype.accelerator else 0
    groups = devices.pcie_groups(itype.name)
    if n > have:
        out.append(Problem(at, f"{n}, but a {itype.name} has {have} accelerators"))
    elif n < have and not dra:
        out.append(Problem(at, f"{n} of {have}: part of a node needs {key_path(('eks', 'devices'))}: dra, which puts "
                               "the pod's EFA devices on its GPUs' PCIe roots (the device plugins cannot)"))
    elif n < have and (groups is None or itype.accelerator.kind != "gpu"):
        out.append(Problem(at, f"{n} of {have}: part of a node is for GPU types whose PCIe topology is known "
                               f"(p4d.24xlarge, p5.48xlarge), not {itype.name}; leave it out to take the whole node"))
    elif n < have and n % groups.gpus:
        out.append(Problem(at, f"{n}: a {itype.name} has {groups.gpus} GPUs per PCIe root; take a multiple of "
                               f"{groups.gpus}"))
    return out
