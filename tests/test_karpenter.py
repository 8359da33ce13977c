"""Karpenter fleets: the EC2NodeClass and NodePool the stack registers, held strictly against Karpenter's own
CRDs at both ends of the supported range (schema, no unknown field, and the CRDs' CEL rules evaluated);
their EFA interfaces against the launch templates' layout; what Karpenter does with a pending job (the
scheduling model in scheduling.py); the controller's AWS side; and the flows Karpenter's nodes need."""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from pathlib import Path

import boto3
import celpy
import jsonschema
import moto
import pytest
import yaml

from components.offline import flows, mocks
from components.planning import bootstrap, config, efa, karpenter, launch, plan
from conftest import DEPLOYER, settings_of, strict
from scheduling import HELM_DATA, coalesce, karpenter_launches, pod_requests
from test_launch import node_pods

CRDS = Path(__file__).resolve().parent / "data" / "crds"
VERSIONS = ("v1.11.0", "v1.14.1")  # the first with networkInterfaces, and the pinned chart's
FILES = {"EC2NodeClass": "karpenter.k8s.aws_ec2nodeclasses.yaml", "NodePool": "karpenter.sh_nodepools.yaml",
         "NodeOverlay": "karpenter.sh_nodeoverlays.yaml"}
NODE_CLASS, NODE_POOL, OVERLAY = (f"kubernetes:{karpenter.NODE_CLASS_API}:EC2NodeClass", f"kubernetes:{karpenter.NODE_POOL_API}:NodePool",
                                  f"kubernetes:{karpenter.NODE_OVERLAY_API}:NodeOverlay")
LT = "aws:ec2/launchTemplate:LaunchTemplate"


# --- strict validation against the pinned CRDs ---------------------------------------------


@lru_cache(maxsize=None)
def crd(version: str, kind: str) -> tuple[str, dict]:
    doc = yaml.safe_load((CRDS / f"karpenter-{version}" / FILES[kind]).read_text())
    (served,) = [v for v in doc["spec"]["versions"] if v.get("storage")]
    return f"{doc['spec']['group']}/{served['name']}", served["schema"]["openAPIV3Schema"]


# Kubernetes' CEL libraries beyond standard CEL that these CRDs use (k8s.io/apiserver/pkg/cel/library):
# strings' split and the regex library's find.
CEL_FUNCTIONS = {
    "split": lambda s, sep: celpy.celtypes.ListType([celpy.celtypes.StringType(x) for x in str(s).split(str(sep))]),
    "find": lambda s, pattern: celpy.celtypes.StringType((re.search(str(pattern), str(s)) or [""])[0]),
}
CEL = celpy.Environment()


def cel_failures(schema: dict, value, path: str = "") -> list[str]:
    """Every x-kubernetes-validations rule of the schema that the value breaks, with its message. Transition
    rules (oldSelf) hold for updates only and are left out."""
    out = []
    for rule in schema.get("x-kubernetes-validations") or []:
        if "oldSelf" in rule["rule"]:
            continue
        program = CEL.program(CEL.compile(rule["rule"]), functions=CEL_FUNCTIONS)
        result = program.evaluate({"self": celpy.json_to_cel(value)})
        if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            out.append(f"{path or '.'}: {rule.get('message', rule['rule'])} ({result!r})")
    if isinstance(value, dict):
        for key, sub in value.items():
            child = (schema.get("properties") or {}).get(key)
            if child is None and isinstance(schema.get("additionalProperties"), dict):
                child = schema["additionalProperties"]
            if child is not None:
                out += cel_failures(child, sub, f"{path}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            out += cel_failures(schema["items"], sub, f"{path}[{i}]")
    return out


def integral(value):
    """Numbers as the engine sends them (floats in the mocks) back to the integers they are."""
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


def check(doc: dict, version: str) -> None:
    api_version, schema = crd(version, doc["kind"])
    assert doc["apiVersion"] == api_version
    jsonschema.Draft7Validator(strict(schema)).validate(doc)
    assert cel_failures(schema, doc) == []


def manifest(resource) -> dict:
    i = integral(resource.inputs)
    return {"apiVersion": i["apiVersion"], "kind": i["kind"], "metadata": i["metadata"], "spec": i["spec"]}


def as_deployed(doc: dict) -> dict:
    """The manifest with the ids only AWS assigns (placeholders offline) in AWS's shape, for the CRDs' patterns."""
    out = copy.deepcopy(doc)
    for key, prefix in (("securityGroupSelectorTerms", "sg"), ("subnetSelectorTerms", "subnet")):
        for n, term in enumerate(out["spec"].get(key) or []):
            if mocks.is_placeholder(term.get("id")):
                term["id"] = f"{prefix}-0{n:016x}"
    return out


# --- stacks -------------------------------------------------------------------------------------


def doc(*fleets: dict, jobs: list | None = None) -> dict:
    d = {"region": "us-east-1", "eks": {"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"],
                                        "operators": ["training-operator", "mpi-operator"], **DEPLOYER},
         "fleets": list(fleets)}
    if jobs:
        d["jobs"] = jobs
    return d


def kfleet(name: str, itype: str, **more) -> dict:
    return {"name": name, "instanceType": itype, "availabilityZone": "us-east-1a", "nodes": {"desired": 0, "max": 16},
            "provisioner": "karpenter", **more}


@lru_cache(maxsize=None)
def run(text: str) -> mocks.Run:
    result = mocks.run(settings_of(json.loads(text)), "dev")
    assert result.error is None, result.error
    return result


def stack(*fleets: dict, jobs: list | None = None) -> mocks.Run:
    return run(json.dumps(doc(*fleets, jobs=jobs)))


P5 = kfleet("p5", "p5.48xlarge")
RESERVED = kfleet("h200", "p5en.48xlarge", capacity={"type": "reservation", "reservationId": "cr-0123456789abcdef0"}, ami="ami-0123456789abcdef0",
                   amiRelease="v20251101")
B300 = kfleet("b300", "p6-b300.48xlarge")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("fleet", [P5, RESERVED, B300], ids=["p5", "p5en-reservation-pinned-ami", "p6-b300"])
def test_node_class_node_pool_and_overlay_pass_the_pinned_crds_strictly(fleet, version):
    result = stack(fleet)
    for typ in (NODE_CLASS, NODE_POOL, OVERLAY):
        (resource,) = result.of_type(typ)
        check(as_deployed(manifest(resource)), version)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["spec"].update(subnetSelector=[{"id": "subnet-1"}]), "Additional properties"),
    (lambda d: d["spec"]["networkInterfaces"][1].update(interfaceType="efa"), "'efa' is not one of"),
    (lambda d: d["spec"].update(networkInterfaces=d["spec"]["networkInterfaces"][1:]), "must include a primary interface"),
    (lambda d: d["spec"]["networkInterfaces"].append({"networkCardIndex": 1, "deviceIndex": 1, "interfaceType": "efa-only"}),
     "at most one efa device per network card"),
    (lambda d: d["spec"].update(amiSelectorTerms=[{"id": "ami-0123456789abcdef0"}]), "must specify amiFamily"),
], ids=["unknown-field", "efa-interface-type", "no-primary", "two-efa-on-a-card", "ami-without-family"])
def test_the_strict_check_refuses_what_karpenter_would(change, message):
    node_class = as_deployed(manifest(stack(P5).one(NODE_CLASS)))
    check(node_class, VERSIONS[0])
    change(node_class)
    with pytest.raises((jsonschema.ValidationError, AssertionError)) as err:
        check(node_class, VERSIONS[0])
    assert message in str(err.value)


@pytest.mark.parametrize("fleet, efa_only, cards", [(P5, 32, 32), (RESERVED, 16, 16), (B300, 16, 17)], ids=["p5", "p5en", "p6-b300"])
def test_the_node_class_interfaces_are_exactly_the_fleets_layout(fleet, efa_only, cards):
    spec = manifest(stack(fleet).one(NODE_CLASS))["spec"]
    layout = efa.interfaces(config.load(doc(fleet)).catalog().get(fleet["instanceType"]), "ena-primary")
    assert spec["networkInterfaces"] == [{"networkCardIndex": i.network_card_index, "deviceIndex": i.device_index,
                                          "interfaceType": i.interface_type} for i in layout]
    assert sum(i["interfaceType"] == "efa-only" for i in spec["networkInterfaces"]) == efa_only
    assert len({i["networkCardIndex"] for i in spec["networkInterfaces"]}) == cards
    card0 = [i for i in spec["networkInterfaces"] if i["networkCardIndex"] == 0]
    if fleet is B300:  # card 0 takes no EFA device on p6-b300: only the primary interface there
        assert card0 == [{"networkCardIndex": 0, "deviceIndex": 0, "interfaceType": "interface"}]
    else:
        assert card0 == [{"networkCardIndex": 0, "deviceIndex": 0, "interfaceType": "interface"},
                         {"networkCardIndex": 0, "deviceIndex": 1, "interfaceType": "efa-only"}]


def test_a_karpenter_fleet_has_the_node_groups_security_groups_placement_boot_check_and_labels():
    node_group_fleet = {"name": "g6", "instanceType": "g6.8xlarge", "availabilityZone": "us-east-1a", "nodes": {"desired": 1}}
    result = stack(P5, node_group_fleet)
    spec = manifest(result.one(NODE_CLASS))["spec"]
    lt = result.one(LT, "g6-lt").inputs  # the node group fleet's template: the groups Karpenter's nodes must carry too
    assert [t["id"] for t in spec["securityGroupSelectorTerms"]] == lt["networkInterfaces"][0]["securityGroups"]
    assert spec["placementGroupSelector"] == {"name": "<p5-pg.name>"}
    assert spec["subnetSelectorTerms"] == [{"id": "<efa-private-us-east-1a.id>"}]
    assert spec["role"] == "<eks-node.name>"
    assert spec["amiSelectorTerms"] == [{"alias": "al2023@latest"}] and "amiFamily" not in spec
    assert spec["metadataOptions"]["httpTokens"] == "required" and spec["associatePublicIPAddress"] is False
    assert bootstrap.COUNT_EFA_DEVICES.strip() in spec["userData"] and "expected=32" in spec["userData"]
    # The kubelet's pod limit as the node groups' nodes get it (the VPC CNI's addresses), which Karpenter schedules by.
    assert spec["kubelet"] == {"maxPods": plan.build(config.load(doc(P5))).fleet("p5").max_pods}
    # No node group and no launch template of ours for it: Karpenter makes both.
    assert not [r for r in result.of_type("aws:eks/nodeGroup:NodeGroup") if r.name == "p5-nodes"]
    assert not [r for r in result.of_type(LT) if r.name == "p5-lt"]
    pool = manifest(result.one(NODE_POOL))["spec"]
    assert pool["template"]["metadata"]["labels"] == {"efa-infra/fleet": "p5", "vpc.amazonaws.com/efa.present": "true",
                                                      "efa-infra/accelerator": "gpu"}
    assert pool["template"]["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
    assert pool["limits"] == {"nodes": 16}
    assert {r["key"]: r["values"] for r in pool["template"]["spec"]["requirements"]} == {
        "node.kubernetes.io/instance-type": ["p5.48xlarge"], "topology.kubernetes.io/zone": ["us-east-1a"],
        "karpenter.sh/capacity-type": ["on-demand"]}


def test_a_reservation_is_selected_by_id_and_the_pool_launches_reserved_capacity_on_the_pinned_ami():
    result = stack(RESERVED)
    spec = manifest(result.one(NODE_CLASS))["spec"]
    assert spec["capacityReservationSelectorTerms"] == [{"id": "cr-0123456789abcdef0"}]
    assert "placementGroupSelector" not in spec  # the reservation decides placement
    assert spec["amiSelectorTerms"] == [{"id": "ami-0123456789abcdef0"}] and spec["amiFamily"] == "AL2023"
    reqs = {r["key"]: r["values"] for r in manifest(result.one(NODE_POOL))["spec"]["template"]["spec"]["requirements"]}
    assert reqs["karpenter.sh/capacity-type"] == ["reserved"]


# --- what Karpenter does with a pending job ------------------------------------------------------


def launches(result: mocks.Run, template: dict, aws_instance_types: dict, *, overlays: bool = True) -> list:
    pools = [manifest(r) for r in result.of_type(NODE_POOL)]
    classes = {manifest(r)["metadata"]["name"]: manifest(r) for r in result.of_type(NODE_CLASS)}
    found = [manifest(r) for r in result.of_type(OVERLAY)] if overlays else []
    return karpenter_launches(template, pools, classes, found, aws_instance_types)


def test_a_pending_16_node_job_launches_the_p5_node_pool_with_its_efa_requests_intact(aws_instance_types):
    job = {"name": "train", "fleet": "p5", "launcher": "torchrun", "command": ["train.py"], "nodes": 16,
           "image": "public.ecr.aws/example/train:1", "kind": "pytorchjob"}
    d = doc(P5, kfleet("h200", "p5en.48xlarge"), jobs=[job])
    result = run(json.dumps(d))
    cfg = config.load(copy.deepcopy(d))
    (template,) = node_pods(launch.render_manifests(cfg, cfg.jobs[0]))
    requests = pod_requests(template)
    assert requests["vpc.amazonaws.com/efa"] == 32 and requests["nvidia.com/gpu"] == 8 and requests["hugepages-2Mi"] == 5120
    (node,) = launches(result, template, aws_instance_types)  # the p5 pool only: the p5en pool's labels do not match
    assert node.nodepool == "p5" and node.instance_type == "p5.48xlarge"
    assert node.allocatable["vpc.amazonaws.com/efa"] == 32
    assert node.interfaces == manifest(result.one(NODE_CLASS, "p5-nodeclass"))["spec"]["networkInterfaces"]
    assert manifest(result.one(NODE_POOL, "p5-nodepool"))["spec"]["limits"]["nodes"] >= 16  # all 16 pods get a node
    # Without the hugepages overlay Karpenter would launch nothing for these pods (no hugepages in its model).
    assert launches(result, template, aws_instance_types, overlays=False) == []
    # A node class with fewer EFA interfaces than the pods ask for launches nothing either.
    fewer = copy.deepcopy(result)
    nc = fewer.one(NODE_CLASS, "p5-nodeclass")
    nc.inputs["spec"]["networkInterfaces"] = nc.inputs["spec"]["networkInterfaces"][:-1]
    assert launches(fewer, template, aws_instance_types) == []


def test_the_controller_chart_values_merge_into_its_defaults():
    result = stack(P5)
    release = result.one("kubernetes:helm.sh/v3:Release", "karpenter-controller").inputs
    facts = karpenter.facts()
    assert (release["chart"], release["version"]) == (facts["chart"], facts["version"])
    merged = coalesce(yaml.safe_load((HELM_DATA / f"karpenter-{facts['version']}" / "values.yaml").read_text()), release["values"])
    settings = merged["settings"]
    assert settings["clusterName"] == "dev-eks" and settings["interruptionQueue"] == "<karpenter-interruption.name>"
    assert settings["featureGates"]["nodeOverlay"] is True and settings["featureGates"]["reservedCapacity"] is True
    assert merged["serviceAccount"]["name"] in (None, "", "karpenter")  # the chart's own name: the Pod Identity association's
    identity = result.one("aws:eks/podIdentityAssociation:PodIdentityAssociation").inputs
    assert (identity["namespace"], identity["serviceAccount"]) == (release["namespace"], "karpenter")


def test_the_controller_waits_for_what_it_runs_on_and_not_for_the_gpu_node_groups():
    """Its pods need the control plane, the system nodes, the VPC CNI and (for its role) the Pod Identity agent;
    a fleet's node group, which may wait for GPU nodes to boot, is not among them."""
    result = stack(P5, {**kfleet("trn", "trn1.32xlarge"), "provisioner": "node-group"})
    release = result.one("kubernetes:helm.sh/v3:Release", "karpenter-controller")
    waits = {u.split("::")[-1] for u in release.depends_on}
    assert {"eks-cluster", "eks-system", "eks-vpc-cni", "eks-pod-identity-agent", "karpenter-controller"} <= waits
    assert result.one("aws:eks/nodeGroup:NodeGroup", "trn-nodes").urn not in release.depends_on
    assert not any(u.endswith("::eks") for u in release.depends_on)  # the cluster component, which holds the node groups


def test_the_controller_policies_are_karpenters_own_filled_in_and_valid_iam():
    result = stack(P5)
    policies = {r.name: r.inputs["policy"] for r in result.of_type("aws:iam/policy:Policy")}
    assert set(policies) == {f"karpenter-{n}" for n in karpenter.aws_side()["policies"]}
    for text in policies.values():
        assert "${" not in text
    lifecycle = json.loads(policies["karpenter-NodeLifecyclePolicy"])
    run_instances = next(s for s in lifecycle["Statement"] if s["Sid"] == "AllowScopedEC2InstanceAccessActions")
    # Placement groups and capacity reservations: what the EFA fleets' node classes select.
    assert {"arn:aws:ec2:us-east-1:*:placement-group/*", "arn:aws:ec2:us-east-1:*:capacity-reservation/*"} <= set(run_instances["Resource"])
    passrole = json.loads(policies["karpenter-IAMIntegrationPolicy"])
    assert any(s.get("Resource") == "<eks-node.arn>" for s in passrole["Statement"])  # the node role it may pass
    with moto.mock_aws():  # IAM's own checks of each document, as moto makes them
        iam = boto3.client("iam", region_name="us-east-1")
        role = result.one("aws:iam/role:Role", "karpenter-controller").inputs
        iam.create_role(RoleName="karpenter", AssumeRolePolicyDocument=role["assumeRolePolicy"])
        deployed = {"<eks-node.arn>": "arn:aws:iam::123456789012:role/eks-node", "<aws.accountId>": "123456789012",
                    "<karpenter-interruption.arn>": "arn:aws:sqs:us-east-1:123456789012:karpenter-interruption"}
        for name, text in policies.items():
            for placeholder, value in deployed.items():
                text = text.replace(placeholder, value)
            assert "<" not in text, text
            iam.create_policy(PolicyName=name, PolicyDocument=text)
    events = [json.loads(r.inputs["eventPattern"]) for r in result.of_type("aws:cloudwatch/eventRule:EventRule")]
    assert all(len(r.name) + 8 <= 64 for r in result.of_type("aws:cloudwatch/eventRule:EventRule"))  # auto-names: name-1234567
    assert {"source": ["aws.ec2"], "detail-type": ["EC2 Capacity Reservation Instance Interruption Warning"]} in events
    targets = result.of_type("aws:cloudwatch/eventTarget:EventTarget")
    assert len(targets) == len(events) and {t.inputs["arn"] for t in targets} == {"<karpenter-interruption.arn>"}


def test_karpenter_nodes_get_the_flows_a_fleet_needs():
    model = flows.model(stack(P5).resources)
    assert model.parties["p5 node"].groups == tuple(t["id"] for t in manifest(stack(P5).one(NODE_CLASS))["spec"]["securityGroupSelectorTerms"])
    verdicts = [v for v in model.verdicts() if "p5" in (v.need.sender + v.need.receiver)]
    assert {v.need.name for v in verdicts} >= {"EFA between a fleet's nodes (all traffic)", "node to the API server (TCP 443)",
                                              "control plane to kubelet (TCP 10250)", "pod to CoreDNS (UDP 53)"}
    assert all(v.allowed for v in verdicts), [flows.describe(v) for v in verdicts if not v.allowed]


# --- what the config refuses ---------------------------------------------------------------------


@pytest.mark.parametrize("change, key, message", [
    (lambda d: d.pop("eks"), "fleets[0].provisioner", "eks.enabled is false"),
    (lambda d: d["eks"].update(existing={"clusterName": "shared"}), "fleets[0].provisioner", "the stack joins eks.existing"),
    (lambda d: d["fleets"][0].update(efaLayout="efa-primary"), "fleets[0].efaLayout", "takes only interface and efa-only"),
    (lambda d: d["fleets"][0].update(nodes={"min": 1, "desired": 2, "max": 4}), "fleets[0].nodes", "set min and desired to 0"),
    (lambda d: d["fleets"][0].update(capacity={"type": "reservation",
                                               "reservationGroupArn": "arn:aws:resource-groups:us-east-1:123456789012:group/g"},
                                     placement={"mode": "none"}),
     "fleets[0].capacity.reservationGroupArn", "not by resource group"),
    (lambda d: d["fleets"][0].update(autoRepair=True), "fleets[0].autoRepair", "a managed node group's"),
    (lambda d: d.update(jobs=[{"name": "t", "fleet": "p5", "launcher": "torchrun", "command": ["t.py"], "image": "x/y:1"}]),
     "jobs[0].nodes", "launched by Karpenter and keeps no nodes running"),
])
def test_what_karpenter_cannot_do_is_a_config_error_naming_the_key(change, key, message):
    d = doc(copy.deepcopy(P5))
    change(d)
    with pytest.raises(config.ConfigError) as err:
        config.load(d)
    assert any(p.path == f"efa-infra:{key}" and message in p.message for p in err.value.problems), err.value


def test_the_device_plugins_reach_karpenter_launched_nodes(aws_instance_types):
    import scheduling

    result = stack(P5)
    pool, node_class = manifest(result.one(NODE_POOL)), manifest(result.one(NODE_CLASS))
    node = scheduling.karpenter_node(pool, node_class, [], aws_instance_types["p5.48xlarge"])
    taints = pool["spec"]["template"]["spec"]["taints"]
    reached = {}
    for release in result.of_type("kubernetes:helm.sh/v3:Release"):
        chart = scheduling.CHARTS.get(release.inputs["chart"])
        if chart is not None:
            reached[release.inputs["chart"]] = any(
                scheduling.schedules(pod, {**node.labels, "kubernetes.io/arch": "amd64"}, taints)
                for _, pod in chart.pods(release.inputs["values"]))
    # Without these the node never advertises vpc.amazonaws.com/efa or nvidia.com/gpu, and the pods stay pending.
    assert reached == {"aws-efa-k8s-device-plugin": True, "nvidia-device-plugin": True}


def test_the_plan_says_which_fleets_karpenter_launches():
    from components.offline import report

    d = doc(P5)
    text = report.render_text(report.plan_document(plan.build(config.load(copy.deepcopy(d))), "dev", stack(P5).resources, []))
    assert "provisioner       Karpenter: NodePool and EC2NodeClass p5" in text
    assert "chosen by Karpenter's alias al2023@latest" in text and "node auto repair" not in text
