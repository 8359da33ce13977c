"""What EKS, Helm and the network will do with the EKS stacks, not only the shape
of each request: EKS's node group rules (components/planning/eks_rules.py), the device
plugins' effective Helm values against each node's labels and taints
(tests/scheduling.py), and the flows the security groups allow (components/offline/flows.py).
Each check runs on every EKS stack, and a broken variant shows it can fail."""

from __future__ import annotations

import base64
import copy
import dataclasses
import email
import json
import subprocess
import sys

import botocore.session
import pytest
import yaml

import scheduling
from components.planning import config, eks_rules
from components.offline import flows, mocks
from conftest import DEPLOYER, ROOT, base_doc, settings_of

NODEGROUP, LT, RELEASE = "aws:eks/nodeGroup:NodeGroup", "aws:ec2/launchTemplate:LaunchTemplate", "kubernetes:helm.sh/v3:Release"
TRAINIUM = base_doc(eks={"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], **DEPLOYER},
                    fleets=[{"name": "trn", "instanceType": "trn2.48xlarge", "availabilityZone": "us-east-1a", "nodes": {"desired": 2}}])
EKS_STACKS = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("Pulumi.*.yaml")
                    if config.load_file(p).eks.enabled)


def settings(name: str) -> dict:
    return settings_of(TRAINIUM) if name == "trainium" else config.read_stack_file(ROOT / "stacks" / f"Pulumi.{name}.yaml")


@pytest.fixture(scope="module")
def runs() -> dict[str, mocks.Run]:
    out = {name: mocks.run(settings(name), name) for name in [*EKS_STACKS, "trainium"]}
    for name, run in out.items():
        assert run.error is None, f"{name}: {run.error}"
    return out


def requests(run: mocks.Run) -> list[tuple[dict, dict | None]]:
    """Each node group request with the launch template it names."""
    templates = {f"<{lt.name}.id>": lt.inputs for lt in run.of_type(LT)}
    return [(ng.inputs, templates.get((ng.inputs.get("launchTemplate") or {}).get("id"))) for ng in run.of_type(NODEGROUP)]


def test_the_example_stacks_cover_capacity_blocks_and_pinned_amis():
    assert {"prod", "eks-capacity-block", "eks-pinned-ami"} <= set(EKS_STACKS)


# --- EKS's API rules -------------------------------------------------------------


def test_the_rules_agree_with_the_eks_api_model():
    model = botocore.session.get_session().get_service_model("eks")
    limits = lambda shape: (model.shape_for(shape).metadata["min"], model.shape_for(shape).metadata["max"])  # noqa: E731
    assert (limits("labelKey"), limits("labelValue")) == (eks_rules.LABEL_KEY_CHARS, eks_rules.LABEL_VALUE_CHARS)
    assert (limits("taintKey"), limits("taintValue")) == (eks_rules.TAINT_KEY_CHARS, eks_rules.TAINT_VALUE_CHARS)
    assert set(eks_rules.TAINT_EFFECTS.values()) == set(model.shape_for("TaintEffect").enum)
    assert set(eks_rules.CAPACITY_TYPES) == set(model.shape_for("CapacityTypes").enum)
    assert set(eks_rules.AMI_TYPES.values()) <= set(model.shape_for("AMITypes").enum)
    assert all(r.source for r in eks_rules.RULES.values())


@pytest.mark.parametrize("name", [*EKS_STACKS, "trainium"])
def test_every_node_group_request_passes_eks_rules(runs, name):
    catalog = config.load(config.document_from_settings(settings(name))).catalog()
    for node_group, template in requests(runs[name]):
        assert eks_rules.node_group_problems(node_group, template) == []
        if template and not template.get("imageId"):  # the AMI type EKS offers for the node (rule ami-type-for-node)
            itype = catalog.get(template["instanceType"])
            kind = itype.accelerator.kind if itype.accelerator else None
            assert node_group["amiType"] == eks_rules.ami_type(kind, itype.architecture)


def broken(run: mocks.Run, fleet_group: str, node_group: dict | None = None, template: dict | None = None) -> list[str]:
    ng, lt = next((n, t) for n, t in requests(run) if t is not None and n["launchTemplate"]["id"] == f"<{fleet_group}-lt.id>")
    return eks_rules.node_group_problems({**ng, **(node_group or {})}, {**lt, **(template or {})})


@pytest.mark.parametrize("node_group, template, rule", [
    ({"labels": {"efa-infra/fleet": "p5", "node.kubernetes.io/instance-type": "p5.48xlarge"}}, None, "reserved-prefix"),
    ({"labels": {"efa-infra/fleet": "x" * 64}}, None, "label-length"),
    ({"taints": [{"key": "k8s.io/gpu", "value": "true", "effect": "NO_SCHEDULE"}]}, None, "reserved-prefix"),
    ({"taints": [{"key": "gpu", "value": "true", "effect": "NoSchedule"}]}, None, "taint-effect"),
    ({"taints": [{"key": f"t{i}", "value": "x", "effect": "NO_SCHEDULE"} for i in range(51)]}, None, "taint-count"),
    (None, {"iamInstanceProfile": {"arn": "arn:aws:iam::1:instance-profile/x"}}, "lt-no-profile"),
    (None, {"networkInterfaces": [{"networkCardIndex": 0.0, "deviceIndex": 0.0, "subnetId": "subnet-1"}]}, "lt-no-subnet"),
    ({"amiType": "CUSTOM"}, {"imageId": "ami-0123456789abcdef0"}, "ami-type-xor-image"),  # the code before the fix
    (None, {"imageId": "ami-0123456789abcdef0"}, "ami-type-xor-image"),
    ({"amiType": None}, {"imageId": "ami-0123456789abcdef0"}, "user-data-nodeadm"),
    (None, {"userData": base64.b64encode(b"#!/bin/bash\ntrue\n").decode()}, "user-data-mime"),
    ({"capacityType": "CAPACITY_BLOCK"}, None, "capacity-block"),
    ({"capacityType": "RESERVED"}, None, "capacity-type"),
])
def test_the_rules_catch_what_eks_refuses(runs, node_group, template, rule):
    problems = broken(runs["prod"], "p5", node_group, template)
    assert any(f"[{rule}: " in p for p in problems), problems


def test_a_capacity_block_fleet_asks_eks_for_a_capacity_block(runs):
    ng, lt = next((n, t) for n, t in requests(runs["eks-capacity-block"]) if t is not None)
    assert ng["capacityType"] == "CAPACITY_BLOCK"
    assert lt["instanceMarketOptions"] == {"marketType": "capacity-block"}
    assert lt["capacityReservationSpecification"] == {"capacityReservationTarget": {"capacityReservationId": "cr-0a1b2c3d4e5f60718"}}
    assert "placement" not in lt  # the block decides placement
    # What the code before the fix sent: no capacity type beside a capacity-block template.
    assert any("[capacity-block: " in p for p in broken(runs["eks-capacity-block"], "h200", {"capacityType": None}))


def test_a_pinned_ami_joins_through_nodeadm_with_its_labels_and_taints(runs):
    ng, lt = next((n, t) for n, t in requests(runs["eks-pinned-ami"]) if t is not None)
    assert "amiType" not in ng and lt["imageId"] == "ami-0f1e2d3c4b5a69788"
    parts = email.message_from_string(base64.b64decode(lt["userData"]).decode()).get_payload()
    (node_config,) = [yaml.safe_load(p.get_payload()) for p in parts if p.get_content_type() == "application/node.eks.aws"]
    # Read back from EKS once the cluster exists: values AWS assigns, as placeholders offline.
    assert node_config["spec"]["cluster"] == {
        "name": "eks-pinned-ami-eks", "apiServerEndpoint": "<eks-pinned-ami-eks.endpoint>",
        "certificateAuthority": "<eks-pinned-ami-eks.certificate>", "cidr": "<eks-pinned-ami-eks.serviceIpv4Cidr>"}
    flags = node_config["spec"]["kubelet"]["flags"]
    assert "--register-with-taints=nvidia.com/gpu=true:NoSchedule" in flags
    assert "--node-labels=efa-infra/fleet=a100,vpc.amazonaws.com/efa.present=true,efa-infra/accelerator=gpu" in flags
    # p4d.24xlarge: EKS's ceiling of 250 pods for types over 30 vCPUs, which its interfaces can address.
    assert node_config["spec"]["kubelet"]["config"]["maxPods"] == 250


@pytest.mark.parametrize("taints, key, message", [
    ([{"key": "node-role.kubernetes.io/gpu"}], "taints[0].key", "uses a prefix EKS reserves"),
    ([{"key": "gpu", "value": "v" * 64}], "taints[0].value", "has 64 characters; EKS takes 0 to 63"),
    ([{"key": f"t{i}"} for i in range(51)], "taints", "51 taints; EKS takes at most 50"),
])
def test_config_refuses_taints_eks_would_refuse(taints, key, message):
    doc = copy.deepcopy(TRAINIUM)
    doc["fleets"][0]["taints"] = taints
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    assert any(p.path == f"efa-infra:fleets[0].{key}" and message in p.message for p in err.value.problems), err.value
    run = mocks.run(settings_of(doc), "t")
    assert run.error and run.resources == []


# --- Helm's merge of our values, and where each plugin's pods go --------------------


def test_helm_merge_rules():
    defaults = {"affinity": {"nodeAffinity": {"required": ["default"]}}, "tolerations": ["a", "b"], "keep": 1}
    assert scheduling.coalesce(defaults, {"affinity": {}})["affinity"] == defaults["affinity"]  # {} clears nothing
    assert "affinity" not in scheduling.coalesce(defaults, {"affinity": None})  # only null deletes
    assert scheduling.coalesce(defaults, {"tolerations": ["c"]})["tolerations"] == ["c"]  # lists replace
    assert scheduling.coalesce(defaults, {"affinity": {"nodeAffinity": {"required": ["ours"]}}})["affinity"] == {
        "nodeAffinity": {"required": ["ours"]}}


def nodes(run: mocks.Run) -> dict[str, tuple[dict, list[dict], dict]]:
    """Each node group's node as the scheduler sees it: the labels EKS applies plus those the kubelet sets
    itself (Kubernetes "Well-Known Labels": instance type, architecture), and its taints in Kubernetes form."""
    to_k8s = {v: k for k, v in eks_rules.TAINT_EFFECTS.items()}
    out = {}
    for ng, lt in requests(run):
        itype = lt["instanceType"] if lt else ng["instanceTypes"][0]
        labels = {**ng["labels"], "node.kubernetes.io/instance-type": itype, "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux"}
        taints = [{"key": t["key"], "value": t["value"], "effect": to_k8s[t["effect"]]} for t in ng.get("taints") or []]
        out[ng["labels"].get("efa-infra/fleet", "system")] = (labels, taints, ng)
    return out


def plugin_pods(run: mocks.Run, releases: list | None = None) -> dict[str, dict[str, int]]:
    """DaemonSet pods per node kind and chart: the chart's defaults merged with the values we send."""
    counts: dict[str, dict[str, int]] = {}
    for name, (labels, taints, _) in nodes(run).items():
        for release in releases if releases is not None else run.of_type(RELEASE):
            chart = scheduling.CHARTS[release.inputs["chart"]]
            pod = chart.scheduling(scheduling.coalesce(chart.defaults(), release.inputs["values"]))
            counts.setdefault(name, {})[release.inputs["chart"]] = int(scheduling.schedules(pod, labels, taints))
    return counts


@pytest.mark.parametrize("name", [*EKS_STACKS, "trainium"])
def test_each_accelerator_node_gets_one_efa_and_one_accelerator_plugin_pod_and_system_nodes_none(runs, name):
    run = runs[name]
    plan_cfg = config.load(config.document_from_settings(settings(name)))
    charts = {r.inputs["chart"] for r in run.of_type(RELEASE)}
    counts = plugin_pods(run)
    assert set(counts["system"].values()) == {0}
    for f in plan_cfg.fleets:
        itype = plan_cfg.catalog().get(f.instance_type)
        expected = {c: 0 for c in charts}
        expected["aws-efa-k8s-device-plugin"] = int(f.efa and itype.efa_supported)
        for chart_name, chart in scheduling.CHARTS.items():
            if chart.accelerator and itype.accelerator and chart.accelerator == itype.accelerator.kind:
                expected[chart_name] = 1
        assert counts[f.name] == expected, f.name


def test_an_empty_affinity_leaves_the_nvidia_default_and_no_gpu_node_gets_the_plugin(runs):
    run = runs["prod"]
    (nvidia,) = [r for r in run.of_type(RELEASE) if r.inputs["chart"] == "nvidia-device-plugin"]
    values = {**{k: v for k, v in nvidia.inputs["values"].items() if k != "affinity"},
              "nodeSelector": {"efa-infra/accelerator": "gpu"}, "affinity": {}}  # what the code before the fix sent
    before = dataclasses.replace(nvidia, inputs={**nvidia.inputs, "values": values})
    assert plugin_pods(run, [before])["p5"] == {"nvidia-device-plugin": 0}
    assert plugin_pods(run, [nvidia])["p5"] == {"nvidia-device-plugin": 1}


# --- network flows ----------------------------------------------------------------------


FLOW_STACKS = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("Pulumi.*.yaml")
                     if config.load_file(p).fleets)


@pytest.mark.parametrize("name", FLOW_STACKS)
def test_every_flow_a_training_cluster_needs_is_allowed(name):
    run = mocks.run(config.read_stack_file(ROOT / "stacks" / f"Pulumi.{name}.yaml"), name)
    model = flows.model(run.resources)
    assert model.needs
    blocked = [flows.describe(v) for v in model.verdicts() if not v.allowed]
    assert blocked == []
    if config.load_file(ROOT / "stacks" / f"Pulumi.{name}.yaml").eks.enabled:
        assert {"pod to CoreDNS (UDP 53)", "control plane to kubelet (TCP 10250)", "node to the API server (TCP 443)"} <= {
            n.name for n in model.needs}


def test_without_eks_cluster_group_on_gpu_nodes_pods_cannot_reach_coredns(runs):
    """The security groups before the fix: pulumi-eks's own groups, and the GPU nodes carrying the EFA group and
    pulumi-eks's node group, but not EKS's cluster group that the system nodes carry."""
    resources = []
    for r in runs["prod"].resources:
        if r.type == "eks:index:Cluster":
            r = dataclasses.replace(r, inputs={**r.inputs, "skipDefaultSecurityGroups": False})
        if r.type == LT:
            interfaces = [{**i, "securityGroups": ["<efa-efa.id>", "<eks-cluster.nodeSecurityGroupId>"]} for i in r.inputs["networkInterfaces"]]
            r = dataclasses.replace(r, inputs={**r.inputs, "networkInterfaces": interfaces})
        resources.append(r)
    blocked = {v.need.name for v in flows.model(resources).verdicts() if not v.allowed}
    assert {"pod to CoreDNS (UDP 53)", "pod to CoreDNS (TCP 53)", "training pods to system pods (all TCP)",
            "system pods to training pods (all TCP)"} <= blocked


def test_a_flow_needs_both_an_egress_and_an_ingress_rule(runs):
    resources = [r for r in runs["prod"].resources if r.name != "efa-endpoints-https"]
    verdicts = {(v.need.name, v.need.sender): v for v in flows.model(resources).verdicts()}
    v = verdicts[("node to interface endpoints (TCP 443)", "p5 node")]
    assert not v.allowed and v.egress is not None and v.ingress is None


def test_plan_shows_the_flows():
    result = subprocess.run([sys.executable, "-m", "components", "plan", "--stack", "prod", "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    coredns = next(f for f in doc["flows"] if f["flow"] == "pod to CoreDNS (UDP 53)")
    assert coredns == {"flow": "pod to CoreDNS (UDP 53)", "from": "p5 pod", "to": "system pod", "allowed": True,
                       "egress": "efa-efa-out-world", "ingress": "eks-cluster-sg"}
    text = subprocess.run([sys.executable, "-m", "components", "plan", "--stack", "prod"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120).stdout
    assert "Network flows the cluster needs (all allowed)" in text
    assert "ok      pod to CoreDNS (UDP 53): p5 pod -> system pod" in text


# --- operators and the checkout path ----------------------------------------------------


def test_operators_stay_when_the_last_job_of_their_kind_goes():
    settings = config.read_stack_file(ROOT / "stacks" / "Pulumi.prod.yaml")
    run = mocks.run({k: v for k, v in settings.items() if k != "efa-infra:jobs"}, "prod")
    assert run.error is None, run.error
    (training,) = run.of_type("kubernetes:kustomize/v2:Directory")
    (mpi,) = run.of_type("kubernetes:yaml/v2:ConfigFile")
    assert mpi.inputs["file"].endswith("/mpi-operator/v0.6.0/deploy/v2beta1/mpi-operator.yaml")
    # Relative to the project directory, where Pulumi runs the program: no checkout path in the state.
    assert training.inputs["directory"] == "components/manifests/training-operator"
    assert (ROOT / training.inputs["directory"] / "kustomization.yaml").is_file()


def test_a_job_whose_operator_is_not_installed_is_a_config_error():
    settings = config.read_stack_file(ROOT / "stacks" / "Pulumi.prod.yaml")
    eks = {**settings["efa-infra:eks"], "operators": ["mpi-operator"]}
    with pytest.raises(config.ConfigError) as err:
        config.load(config.document_from_settings({**settings, "efa-infra:eks": eks}))
    (problem,) = err.value.problems
    assert problem.path == "efa-infra:jobs[0].kind"
    assert "add training-operator to efa-infra:eks.operators (it lists mpi-operator)" in problem.message


def test_a_fleet_in_the_secondary_block_reaches_the_endpoints_only_through_a_rule_for_that_block():
    doc = base_doc(network={"secondaryCidr": "100.64.0.0/16", "interfaceEndpoints": ["ecr.api"]})
    doc["fleets"][0]["subnet"] = "secondary"
    run = mocks.run(settings_of(doc), "t")
    assert run.error is None, run.error
    need = ("node to interface endpoints (TCP 443)", "gpu node")
    verdicts = {(v.need.name, v.need.sender): v for v in flows.model(run.resources).verdicts()}
    assert verdicts[need].allowed and verdicts[need].ingress.source == "efa-endpoints-https-secondary"
    without = [r for r in run.resources if r.name != "efa-endpoints-https-secondary"]
    assert not {(v.need.name, v.need.sender): v for v in flows.model(without).verdicts()}[need].allowed
