"""The offline plan as people and pipelines read it: fleets, subnets, the
network flows and the resource tree. Pure formatting of a StackPlan and a mock
run's registrations.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
import hashlib
import json
import re
from typing import Any

from . import flows
from ..planning import deployer, eks_versions
from ..planning.addressing import Subnet
from ..planning.bootstrap import BOOT_CHECK_TAINT
from ..planning.config.data import PATH_ENV
from ..planning.plan import FleetPlan, StackPlan, default_ami

AWS_ASSIGNED = "assigned by AWS at deploy time"
# Inputs too noisy for the tree; the JSON has them all.
HIDDEN_INPUTS = {"tags", "description", "tagSpecifications"}
LONG_TEXT = 120  # characters: a longer input value is summarised in the text plan (--json keeps it whole)


def _placement(fp: FleetPlan) -> str:
    mode = fp.config.placement_mode
    if mode == "cluster":
        return "a new cluster placement group"
    if mode == "existing":
        return f"existing placement group {fp.config.placement.group_name}"
    return f"no placement group ({fp.config.capacity.type} decides placement)"


def _ami(fp: FleetPlan) -> str:
    if fp.config.ami:
        return fp.config.ami
    if fp.on_eks and fp.config.provisioner == "karpenter":
        return "EKS-optimized AL2023 AMI for the type (accelerated variant), chosen by Karpenter's alias al2023@latest"
    if fp.on_eks:
        return "EKS-optimized accelerated AMI, chosen by the node group's AMI type"
    return f"{default_ami(fp.itype)} (resolved by EC2 at each launch)"


def _boot_check(fp: FleetPlan) -> str:
    if not fp.config.boot_check:
        return "logs only (bootCheck: false)"
    if fp.on_eks:
        release = f" (through nodeadm's drop-in: the pinned AMI's release {fp.config.ami_release} reads it)" if fp.config.ami else ""
        return f"a node missing EFA devices or accelerators registers with the taint {BOOT_CHECK_TAINT}{release}"
    return "a node missing EFA devices or accelerators marks itself unhealthy; its Auto Scaling group replaces it"


def _window(fp: FleetPlan, window: dict | None) -> dict | None:
    if window is None:
        return None
    by = "EKS's own scheduled action" if fp.on_eks else "a scheduled action"
    up = f"to {fp.config.nodes.desired} nodes at {window['scale_up_at']}" if window["scale_up_at"] else "running its nodes now"
    return {"start": window["start"], "end": window["end"], "scaleUp": up, "scaleDown": f"to 0 at {window['scale_down_at']} ({by})"}


def fleet_facts(fp: FleetPlan, subnet: Subnet, window: dict | None = None, reservations: list[dict] | None = None) -> dict[str, Any]:
    f, itype, s = fp.config, fp.itype, fp.summary
    accel = itype.accelerator
    return {
        "name": f.name,
        "instanceType": f.instance_type,
        "accelerators": f"{accel.count} x {accel.name}" if accel else None,
        "nodes": {"min": f.nodes.min, "desired": f.nodes.desired, "max": f.nodes.maximum},
        "availabilityZone": f.availability_zone,
        "placement": _placement(fp),
        "capacity": " ".join(filter(None, (f.capacity.type, f.capacity.reservation_id, f.capacity.reservation_group_arn))),
        "efaLayout": f.efa_layout if f.efa else "none (efa: false)",
        "efaDevicesPerNode": s.efa_devices,
        "efaDevicesMax": itype.maximum_efa_interfaces,
        "interfaces": [i.as_api() for i in fp.interfaces],
        "efaBandwidthGbps": s.efa_bandwidth_gbps,
        "networkBandwidthGbps": s.network_bandwidth_gbps,
        "bandwidthNote": itype.bandwidth_note,
        "privateIpsPerNode": s.private_ips,
        "addressesPerNode": fp.addresses_per_node,
        "maxPodsPerNode": fp.max_pods,
        "subnet": {"cidr": subnet.cidr, "existingId": subnet.existing_id, "capacity": subnet.capacity, "need": subnet.need},
        "target": "eks" if fp.on_eks else "ec2",
        "ami": _ami(fp),
        "bootCheck": _boot_check(fp),
        "provisioner": f.provisioner if fp.on_eks else None,
        "autoRepair": fp.auto_repair if fp.on_eks and f.provisioner == "node-group" else None,
        "capacityWindow": _window(fp, window),
        "fileSystem": _file_system(fp),
        # What the deploy reads of each reservation and checks against the fleet (placeholders offline).
        "capacityReservations": reservations,
    }


def _file_system(fp: FleetPlan) -> dict | None:
    f = fp.config.fsx
    if f is None:
        return None
    return {"storageGiB": f.storage_gib, "throughputPerTiB": f.throughput_per_tib, "efa": fp.fsx_efa, "mountPath": f.mount_path,
            "mountedBy": "the CSI driver, for the jobs' pods" if fp.on_eks else "the boot script",
            "dataRepositories": [{"s3": r.s3, "path": r.path} for r in f.data_repositories]}


def job_facts(jp, unmanaged: bool, s3: list | None = None) -> dict[str, Any]:
    """A job as the plan lists it (jp: launch.JobPlan; unmanaged: it targets a cluster the stack does not manage;
    s3: the job's S3 locations)."""
    s3 = s3 or []
    artifacts = (f"{jp.kind} manifests on EKS" if jp.target == "eks"
                 else "a launch script in an SSM document, run on every node of the fleet")
    return {
        "name": jp.job, "fleet": jp.fleet, "unmanagedCluster": unmanaged, "launcher": jp.launcher, "target": jp.target,
        "kind": jp.kind if jp.target == "eks" else None,
        "nodes": jp.nodes, "procsPerNode": jp.procs_per_node, "efa": jp.efa_devices > 0,
        "efaDevices": jp.efa_devices, "accelerators": jp.accelerator_count, "rdma": jp.rdma,
        "env": jp.env, "artifacts": artifacts,
        "s3": [{"uri": loc.uri, "access": loc.access} for loc in s3],
        "identity": (f"EKS Pod Identity, service account {jp.namespace}/{jp.service_account}" if jp.service_account
                     else "the fleet's node role" if s3 and jp.target == "ec2" else None),
        "fsxMount": jp.fsx_mount_path,
    }


def cluster_facts(plan: StackPlan, today: date) -> dict[str, Any] | None:
    """The cluster's versions, on the calendar, and where `pulumi up` runs."""
    eks = plan.config.eks
    if not eks.enabled:
        return None
    control = eks_versions.calendar()[eks.version]
    pinned = [fp.name for fp in plan.fleets if fp.config.ami]
    nodes = eks.node_group_version
    if nodes is None:
        node_note = ("keep the version they were created with (eks.nodeGroupVersion unset): after an eks.version change "
                     "they lag the control plane until it is set")
    elif nodes != eks.version:
        node_note = f"{nodes}: lag the control plane's {eks.version}; EKS moves the control plane again only once they match it"
    else:
        node_note = f"{nodes}, as the control plane"
    return {
        "version": eks.version, "support": control.status(today), "endOfStandardSupport": str(control.end_of_standard),
        "endOfExtendedSupport": str(control.end_of_extended), "calendarRead": str(eks_versions.read_on()),
        "nodeGroupVersion": nodes, "nodeGroups": node_note,
        "pinnedAmiFleets": pinned,  # their AMI's release decides their version
        "existing": eks.existing is not None,
        "deployer": {"runsOn": deployer.runs_on(plan.config),
                     "sources": [{"from": s.name, "endpoint": s.endpoint} for s in deployer.sources(plan.config)]},
    }


def plan_document(plan: StackPlan, stack: str, resources: list, jobs: list[dict], windows: dict | None = None,
                  reservations: dict | None = None) -> dict[str, Any]:
    return {
        "stack": stack,
        "region": plan.config.region,
        "runsOn": deployer.runs_on(plan.config),
        "cluster": cluster_facts(plan, datetime.now(timezone.utc).date()),
        "placeholders": f"values written <name.attr> are {AWS_ASSIGNED}",
        "fleets": [fleet_facts(fp, plan.fleet_subnet(fp), (windows or {}).get(fp.name), (reservations or {}).get(fp.name))
                   for fp in plan.fleets],
        "subnets": [
            {"kind": s.kind, "availabilityZone": s.az, "cidr": s.cidr, "existingId": s.existing_id, "capacity": s.capacity,
             "need": s.need, "fleets": s.fleets}
            for s in plan.subnets
        ],
        "flows": [flows.describe(v) for v in flows.model(resources, deployer.sources(plan.config)).verdicts()] if plan.fleets else [],
        "resources": [
            {"type": r.type, "name": r.name, "parent": r.parent, "urn": r.urn, "parentUrn": r.parent_urn,
             "component": not r.custom, "protect": r.protect, "inputs": integral(r.inputs)}
            for r in resources
        ],
        "jobs": jobs,
    }


def integral(value: Any) -> Any:
    """Inputs with whole numbers as integers: the engine hands every number over as a float (16.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value


def _kind(text: str) -> str:
    """What a long input value holds, as far as its first characters tell."""
    head = text.lstrip()[:200]
    if head.startswith("#!"):
        return "script"
    if head.startswith("MIME-Version") or head.startswith("Content-Type: multipart"):
        return "MIME multipart user data"
    if head.startswith(("{", "[")):
        try:
            json.loads(text)
            return "JSON document"
        except ValueError:
            pass
    if re.fullmatch(r"[A-Za-z0-9+/=\s]+", head):
        return "base64"
    return "text"


def summary(text: str) -> str:
    """A long input value as the text plan shows it: its kind, size and hash (the JSON plan has it whole)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"<{_kind(text)}, {len(text.encode())} bytes, sha256 {digest}>"


def _short(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and len(value) > LONG_TEXT:
        return summary(value)
    if isinstance(value, list):
        return f"[{len(value)} items]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_short(v)}" for k, v in value.items() if k not in HIDDEN_INPUTS) + "}"
    return str(value)


def _subnet(s: dict) -> str:
    if s["existingId"]:
        return f"existing {s['existingId']} (AZ, public IPs and free addresses read and checked at deploy time)"
    return f"{s['cidr']} room for {s['capacity']}"


def render_text(doc: dict[str, Any]) -> str:
    out = [f"Offline plan of stack {doc['stack']} ({doc['region']}): no AWS call was made.",
           f"Values written <name.attr> are {AWS_ASSIGNED}.", ""]
    out.append("Fleets" if doc["fleets"] else "Fleets: none")
    for f in doc["fleets"]:
        n = f["nodes"]
        out.append(f"  {f['name']}: {f['instanceType']}" + (f" ({f['accelerators']})" if f["accelerators"] else "")
                   + f" on {f['target'].upper()}, in {f['availabilityZone']}")
        out.append(f"    nodes             min {n['min']} / desired {n['desired']} / max {n['max']}")
        out.append(f"    placement         {f['placement']}; capacity {f['capacity']}")
        out.append(f"    EFA               {f['efaDevicesPerNode']} of {f['efaDevicesMax']} devices per node, layout {f['efaLayout']}")
        layout = ", ".join(f"{i['NetworkCardIndex']}/{i['DeviceIndex']} {i['InterfaceType']}" for i in f["interfaces"])
        out.append(f"    interfaces        card/device: {layout}")
        out.append(f"    EFA bandwidth     {f['efaBandwidthGbps']:g} of {f['networkBandwidthGbps']:g} Gbps attached"
                   + (f" ({f['bandwidthNote']})" if f["bandwidthNote"] else ""))
        pods = f"; {f['addressesPerNode']} with up to {f['maxPodsPerNode']} pods" if f["maxPodsPerNode"] is not None else ""
        out.append(f"    addresses         {f['privateIpsPerNode']} private IP per node{pods}")
        s = f["subnet"]
        out.append(f"    subnet            {_subnet(s)}, needs {s['need']} at max nodes")
        out.append(f"    AMI               {f['ami']}")
        out.append(f"    boot check        {f['bootCheck']}")
        if f["provisioner"] == "karpenter":
            out.append(f"    provisioner       Karpenter: NodePool and EC2NodeClass {f['name']}, nodes launched for pending pods up to max")
        if f["autoRepair"] is not None:
            out.append(f"    node auto repair  {'on' if f['autoRepair'] else 'off'}")
        if f["capacityWindow"]:
            w = f["capacityWindow"]
            out.append(f"    block window      {w['start']} to {w['end']}: scales {w['scaleUp']}, {w['scaleDown']}")
        if f["fileSystem"]:
            fs = f["fileSystem"]
            repos = "".join(f"; {r['s3']} at {r['path']}" for r in fs["dataRepositories"])
            out.append(f"    FSx for Lustre    {fs['storageGiB']} GiB, {fs['throughputPerTiB']} MB/s/TiB, EFA "
                       f"{'on' if fs['efa'] else 'off'}, at {fs['mountPath']} (mounted by {fs['mountedBy']}){repos}")
        for r in f["capacityReservations"] or []:
            ends = "no end" if r["end_date_type"] == "unlimited" else f"ends {r['end_date']}"
            out.append(f"    reservation       {r['id']}: {r['instance_type']} in {r['availability_zone']}, {r['state']}, "
                       f"{r['instance_match_criteria']}, {r['total_instance_count']} instances, {ends}")
    c = doc["cluster"]
    if c is not None and not c["existing"]:
        out += ["", "EKS cluster"]
        out.append(f"  version           {c['version']}: {c['support']} support (standard until {c['endOfStandardSupport']}, "
                   f"extended until {c['endOfExtendedSupport']}; EKS calendar read {c['calendarRead']})")
        out.append(f"  node groups       {c['nodeGroups']}"
                   + (f"; pinned AMIs decide for {', '.join(c['pinnedAmiFleets'])}" if c["pinnedAmiFleets"] else ""))
        ways = ", ".join(f"{s['from']} to the {s['endpoint']} endpoint" for s in c["deployer"]["sources"])
        out.append(f"  pulumi up runs on {c['deployer']['runsOn']}: {ways}")
    out += ["", "Subnets" if doc["subnets"] else "Subnets: none"]
    for s in doc["subnets"]:
        who = f" ({', '.join(s['fleets'])})" if s["fleets"] else ""
        out.append(f"  {s['kind']:<9} {s['availabilityZone']:<12} {_subnet(s)}, need {s['need']}{who}")
    if doc["flows"]:
        blocked = sum(not f["allowed"] for f in doc["flows"])
        out += ["", f"Network flows the cluster needs ({blocked} blocked)" if blocked else "Network flows the cluster needs (all allowed)"]
        for f in doc["flows"]:
            why = f"out by {f['egress']}, in by {f['ingress']}" if f["allowed"] else "BLOCKED: " + (
                "no egress rule" if "egress" not in f else "no ingress rule")
            out.append(f"  {'ok     ' if f['allowed'] else 'BLOCKED'} {f['flow']}: {f['from']} -> {f['to']} ({why})")
    if doc["jobs"]:
        out += ["", "Jobs"]
        for j in doc["jobs"]:
            where = f"cluster {j['fleet']} (not managed by this stack)" if j["unmanagedCluster"] else f"fleet {j['fleet']}"
            out.append(f"  {j['name']}: {j['launcher']} on {where}, {j['nodes']} nodes x {j['procsPerNode']} processes, "
                       f"EFA {'on' if j['efa'] else 'off'} ({j['efaDevices']} devices per pod), {j['artifacts']}")
            if j["s3"]:
                out.append(f"    S3 through {j['identity']}: " + ", ".join(f"{s['uri']} ({s['access']})" for s in j["s3"]))
            where = ([f"FSx at {j['fsxMount']}"] if j["fsxMount"] else []) + [
                f"{k}={j['env'][k]}" for k in PATH_ENV.values() if k in j["env"]]
            if where:
                out.append("    " + "; ".join(where))
    out += ["", f"Resources ({len(doc['resources'])})"]
    children: dict[str | None, list[dict]] = {}
    for r in doc["resources"]:
        children.setdefault(r["parentUrn"], []).append(r)

    def walk(parent: str | None, depth: int) -> None:
        for r in sorted(children.get(parent, []), key=lambda r: (r["type"], r["name"])):
            shown = " ".join(f"{k}={_short(v)}" for k, v in sorted(r["inputs"].items()) if k not in HIDDEN_INPUTS)
            out.append(f"{'  ' * depth}{r['type']}  {r['name']}" + (f"  {shown}" if shown else ""))
            if r["component"]:
                walk(r["urn"], depth + 1)

    walk(None, 1)
    return "\n".join(out)
