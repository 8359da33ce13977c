"""Healthy fleets on the plan: EKS node auto repair and the node monitoring agent,
and Capacity Block fleets that follow their block's window by scheduled actions.
Requests that are AWS API calls pass botocore's own parameter validation."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

import botocore.session
import botocore.validate
import pytest

from components.planning import capacity_window, config
from components.offline import mocks
from conftest import DEPLOYER, ROOT, base_doc, settings_of

NODEGROUP, ADDON, SCHEDULE, ASG = ("aws:eks/nodeGroup:NodeGroup", "aws:eks/addon:Addon", "aws:autoscaling/schedule:Schedule",
                                   "aws:autoscaling/group:Group")
SESSION = botocore.session.get_session()


def valid(service: str, operation: str, params: dict) -> None:
    """botocore's client-side validation of an API request, as the SDKs make it."""
    shape = SESSION.get_service_model(service).operation_model(operation).input_shape
    report = botocore.validate.ParamValidator().validate(params, shape)
    assert not report.has_errors(), report.generate_report()


def stack_run(name: str) -> mocks.Run:
    run = mocks.run(config.read_stack_file(ROOT / "stacks" / f"Pulumi.{name}.yaml"), name)
    assert run.error is None, run.error
    return run


def block_fleet(**capacity) -> dict:
    return {"name": "h200", "instanceType": "p5en.48xlarge", "availabilityZone": "us-east-1a", "nodes": {"min": 1, "desired": 4, "max": 4},
            "capacity": {"type": "capacity-block", "reservationId": "cr-0a1b2c3d4e5f60718", **capacity}}


def at(hours: float) -> str:
    return capacity_window.aws_time(datetime.now(timezone.utc) + timedelta(hours=hours))


# --- EKS node health -------------------------------------------------------------


def test_accelerator_node_groups_repair_their_nodes_and_the_cluster_runs_the_monitoring_agent():
    run = stack_run("prod")
    ng = run.one(NODEGROUP, "p5-nodes").inputs
    assert ng["nodeRepairConfig"] == {"enabled": True}
    assert "nodeRepairConfig" not in run.one(NODEGROUP, "eks-system").inputs  # no accelerators
    agent = run.one(ADDON, "eks-node-monitoring-agent").inputs
    assert agent["addonName"] == "eks-node-monitoring-agent" and "addonVersion" not in agent  # EKS's default for the version
    # The requests as the EKS API takes them (it needs no IAM role of its own: EKS add-ons guide).
    valid("eks", "CreateNodegroup", {"clusterName": "prod-eks", "nodegroupName": "p5", "subnets": ["subnet-1"],
                                      "nodeRole": "arn:aws:iam::1:role/n", "nodeRepairConfig": {"enabled": True}})
    valid("eks", "CreateAddon", {"clusterName": "prod-eks", "addonName": agent["addonName"]})


def test_node_health_can_be_turned_off():
    doc = base_doc(eks={"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], **DEPLOYER, "nodeMonitoringAgent": False})
    doc["fleets"][0].update(autoRepair=False, bootCheck=False)
    run = mocks.run(settings_of(doc), "t")
    assert run.error is None, run.error
    assert "nodeRepairConfig" not in run.one(NODEGROUP, "gpu-nodes").inputs
    assert [a.inputs["addonName"] for a in run.of_type(ADDON)] == ["vpc-cni"]


def test_auto_repair_is_off_by_default_for_fleets_without_accelerators():
    doc = base_doc(eks={"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], **DEPLOYER},
                   fleets=[{"name": "cpu", "instanceType": "c6in.32xlarge", "availabilityZone": "us-east-1a", "nodes": {"desired": 2}}])
    run = mocks.run(settings_of(doc), "t")
    assert run.error is None, run.error
    assert "nodeRepairConfig" not in run.one(NODEGROUP, "cpu-nodes").inputs
    assert [a.inputs["addonName"] for a in run.of_type(ADDON)] == ["vpc-cni"]


# --- Capacity Block windows ----------------------------------------------------------


def test_an_ec2_block_fleet_waits_for_its_block_and_leaves_before_it_ends():
    start, end = at(24), at(24 * 8)
    run = mocks.run(settings_of(base_doc(fleets=[block_fleet(start=start, end=end)])), "t")
    assert run.error is None, run.error
    asg = run.one(ASG).inputs
    assert (asg["minSize"], asg["desiredCapacity"], asg["maxSize"]) == (0, 0, 4)  # nothing can launch before the start
    up, down = (run.one(SCHEDULE, f"h200-block-{w}").inputs for w in ("start", "end"))
    assert (up["startTime"], up["minSize"], up["desiredCapacity"], up["maxSize"]) == (start, 1, 4, 4)
    down_at = capacity_window.aws_time(datetime.fromisoformat(end.replace("Z", "+00:00")) - timedelta(minutes=40))
    assert (down["startTime"], down["minSize"], down["desiredCapacity"]) == (down_at, 0, 0)
    assert up["autoscalingGroupName"] == down["autoscalingGroupName"] == "<h200-asg.name>"
    assert run.outputs["capacityWindows"]["h200"]["scale_up_at"] == start
    for action in (up, down):
        valid("autoscaling", "PutScheduledUpdateGroupAction", {
            "AutoScalingGroupName": "g", "ScheduledActionName": action["scheduledActionName"],
            "StartTime": datetime.fromisoformat(action["startTime"].replace("Z", "+00:00")),
            # Numbers reach the mocks as floats; the provider sends integers.
            "MinSize": int(action["minSize"]), "DesiredCapacity": int(action["desiredCapacity"]), "MaxSize": int(action["maxSize"])})


def test_a_block_that_has_started_runs_its_nodes_with_no_scale_up_in_the_past():
    run = mocks.run(settings_of(base_doc(fleets=[block_fleet(start=at(-2), end=at(20))])), "t")
    assert run.error is None, run.error
    asg = run.one(ASG).inputs
    assert (asg["minSize"], asg["desiredCapacity"]) == (1, 4)
    assert [s.name for s in run.of_type(SCHEDULE)] == ["h200-block-end"]  # AWS refuses a scheduled action in the past


def test_on_eks_the_node_group_scales_up_at_the_start_and_eks_scales_it_down():
    doc = base_doc(eks={"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], **DEPLOYER}, fleets=[block_fleet(start=at(24), end=at(48))])
    run = mocks.run(settings_of(doc), "t")
    assert run.error is None, run.error
    ng = run.one(NODEGROUP, "h200-nodes").inputs
    assert ng["scalingConfig"] == {"minSize": 0, "desiredSize": 0, "maxSize": 4} and ng["capacityType"] == "CAPACITY_BLOCK"
    (up,) = run.of_type(SCHEDULE)  # EKS adds "Capacity Scaledown Before Reservation End" itself
    assert up.inputs["autoscalingGroupName"] == "<h200-nodes.autoScalingGroup>" and up.inputs["desiredCapacity"] == 4


def test_a_window_read_from_the_reservation_shows_as_values_aws_assigns():
    run = stack_run("eks-capacity-block")
    (up,) = run.of_type(SCHEDULE)
    assert up.inputs["startTime"] == "<cr-0a1b2c3d4e5f60718.startDate>"
    window = run.outputs["capacityWindows"]["h200"]
    assert window["scale_down_at"] == "<cr-0a1b2c3d4e5f60718.endDate> less 40 minutes"


def test_the_plan_shows_the_window_and_the_schedule():
    import json
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "components", "plan", "--stack", "eks-capacity-block", "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    (fleet,) = json.loads(result.stdout)["fleets"]
    assert fleet["capacityWindow"] == {
        "start": "<cr-0a1b2c3d4e5f60718.startDate>", "end": "<cr-0a1b2c3d4e5f60718.endDate>",
        "scaleUp": "to 2 nodes at <cr-0a1b2c3d4e5f60718.startDate>",
        "scaleDown": "to 0 at <cr-0a1b2c3d4e5f60718.endDate> less 40 minutes (EKS's own scheduled action)"}
    assert fleet["autoRepair"] is True and "efa-infra/boot-check" in fleet["bootCheck"]


@pytest.mark.parametrize("capacity, key, message", [
    ({"start": at(-48), "end": at(-24)}, "capacity.end", "remove the fleet or give it a new block"),
    ({"start": at(-48), "end": at(0.5)}, "capacity.end", "its nodes go at"),  # inside the last 40 minutes
    ({"start": at(24)}, "capacity.end", "give the block's start and end together"),
    ({"start": at(48), "end": at(24)}, "capacity.end", "is not before its end"),
    ({"instanceCount": 2}, "nodes.max", "4 nodes, but the block holds 2 instances"),
])
def test_a_window_that_cannot_be_used_is_a_config_error(capacity, key, message):
    doc = base_doc(fleets=[block_fleet(**capacity)])
    with pytest.raises(config.ConfigError) as err:
        config.load(copy.deepcopy(doc))
    assert any(p.path == f"efa-infra:fleets[0].{key}" and message in p.message for p in err.value.problems), err.value
    run = mocks.run(settings_of(doc), "t")
    assert run.error and run.resources == []


def test_window_keys_need_a_capacity_block():
    doc = base_doc()
    doc["fleets"][0]["capacity"] = {"start": at(1), "end": at(2)}
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    assert {p.path for p in err.value.problems} == {"efa-infra:fleets[0].capacity.start", "efa-infra:fleets[0].capacity.end"}


def test_a_block_read_at_deploy_time_that_is_over_stops_the_run_before_anything_is_created():
    settings = settings_of(base_doc(fleets=[block_fleet()]))
    lookups = mocks.stand_in_lookups(settings)
    lookups[mocks.GET_CAPACITY_BLOCK] = lambda args: {"id": args["id"], "startDate": at(-48), "endDate": at(-24), "instanceCount": 4}
    run = mocks.run(settings, "t", lookups)
    assert "efa-infra:fleets[0].capacity.reservationId: Capacity Block cr-0a1b2c3d4e5f60718: the block ends at" in run.error
    assert run.resources == []
    lookups[mocks.GET_CAPACITY_BLOCK] = lambda args: {"id": args["id"], "startDate": at(1), "endDate": at(30), "instanceCount": 2}
    run = mocks.run(settings, "t", lookups)
    assert "efa-infra:fleets[0].nodes.max: 4 nodes, but block cr-0a1b2c3d4e5f60718 holds 2" in run.error


@pytest.mark.parametrize("answer, key, message", [
    ({"instanceType": "p5.48xlarge"}, "instanceType", "'p5en.48xlarge', but Capacity Block cr-0a1b2c3d4e5f60718 is for 'p5.48xlarge'"),
    ({"availabilityZone": "us-east-1b"}, "availabilityZone", "'us-east-1a', but Capacity Block cr-0a1b2c3d4e5f60718 is for 'us-east-1b'"),
    ({"startDate": "soon", "endDate": "later"}, "capacity.reservationId", "is not a pair of times"),
])
def test_a_block_read_at_deploy_time_must_be_the_fleets(answer, key, message):
    settings = settings_of(base_doc(fleets=[block_fleet()]))
    lookups = mocks.stand_in_lookups(settings)
    lookups[mocks.GET_CAPACITY_BLOCK] = lambda args: {"id": args["id"], "startDate": at(1), "endDate": at(30), **answer}
    run = mocks.run(settings, "t", lookups)
    assert f"efa-infra:fleets[0].{key}: " in run.error and message in run.error
    assert run.resources == []

