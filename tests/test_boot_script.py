"""The fleets' boot script, run for real as root in a private mount namespace:
/etc is an overlay whose writes land in a scratch directory, /dev holds
stand-in EFA and GPU device nodes, the kernel's hugepage count is a stand-in
file, and `aws`, `curl` (IMDS) and `fi_info` are stand-ins that record their
calls, so the machine running the tests is left alone."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import boto3
import botocore.session
import botocore.validate
import moto
import pytest

from components.planning import bootstrap, config, plan
from components.offline import mocks
from conftest import DEPLOYER, base_doc, settings_of, stand_in_devices

# awsome-distributed-training shows `hugepages-2Mi: 21122Mi` on a p4de node: what the AMI and the EFA installer reserve.
P4DE_PAGES = 21122 // 2
INSTANCE, REGION = "i-0123456789abcdef0", "us-east-1"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}


@dataclass
class Boot:
    pages: int  # the hugepage count after the script
    etc: Path  # what the script wrote under /etc
    log: str
    aws_calls: list[list[str]]


def stub(bin_dir: Path, name: str, body: str) -> None:
    (bin_dir / name).write_text(f"#!/bin/sh\necho \"$@\" >> {bin_dir}/{name}.calls\n{body}\n")
    (bin_dir / name).chmod(0o755)


@pytest.fixture(autouse=True)
def short_device_wait(monkeypatch):
    """A node waits minutes for late device nodes, and a failing one a minute for its fleet's other failures; here a
    missing device is missing for good, and the stand-in cloud counts at once."""
    monkeypatch.setattr(bootstrap, "DEVICE_WAIT", (2, 1))
    monkeypatch.setattr(bootstrap, "GUARD_SETTLE_SECONDS", 0)


def run_boot(tmp_path: Path, node: bootstrap.Node, *, efa_devices: int, gpus: int = 0, reserved_pages: int = 0,
             script: str | None = None, aws: str = "exit 0") -> Boot:
    """`aws`: the stand-in AWS CLI's shell code (its arguments in "$@")."""
    pages = tmp_path / "nr_hugepages"
    pages.write_text(f"{reserved_pages}\n")
    upper, work, logs, bin_dir = (tmp_path / d for d in ("etc", "work", "log", "bin"))
    for d in (upper, work, logs, bin_dir):
        d.mkdir()
    stub(bin_dir, "systemctl", "exit 0")  # never re-exec the real systemd
    stub(bin_dir, "logger", "exit 0")
    stub(bin_dir, "fi_info", "exit 0")  # libfabric lists the efa provider
    stub(bin_dir, "udevadm", "exit 0")
    stub(bin_dir, "nvidia-smi", "exit 0")
    stub(bin_dir, "curl", f'''case "$*" in
  *api/token*) echo token ;;
  *meta-data/instance-id*) echo {INSTANCE} ;;
  *meta-data/placement/region*) echo {REGION} ;;
  *) exit 22 ;;
esac''')
    stub(bin_dir, "aws", aws)
    setup = " && ".join([
        f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc",
        f"mount --bind {pages} /proc/sys/vm/nr_hugepages",
        f"mount --bind {logs} /var/log",
        stand_in_devices(efa_devices, gpus),
    ])
    path = tmp_path / "boot.sh"
    path.write_text(script or bootstrap.boot_script(node))
    result = subprocess.run(["unshare", "--mount", "sh", "-c", f"{setup} && PATH={bin_dir}:$PATH exec bash {path}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    calls = bin_dir / "aws.calls"
    return Boot(int(pages.read_text()), upper, (logs / "efa-infra-boot.log").read_text(),
                [line.split() for line in calls.read_text().splitlines()] if calls.exists() else [])


def p5(**overrides) -> bootstrap.Node:
    return bootstrap.Node(**{"fleet": "p5", "efa_devices": 32, "accelerator": ("gpu", 8), **overrides})


# --- hugepages ------------------------------------------------------------------


def test_boot_script_raises_hugepages_to_what_jobs_need(tmp_path):
    boot = run_boot(tmp_path, p5(), efa_devices=32, gpus=8)
    assert boot.pages == bootstrap.HUGEPAGES_MIB // 2
    assert (boot.etc / "sysctl.d" / "90-efa-infra.conf").read_text() == f"vm.nr_hugepages = {bootstrap.HUGEPAGES_MIB // 2}\n"


def test_boot_script_never_lowers_what_the_ami_reserved(tmp_path):
    boot = run_boot(tmp_path, p5(), efa_devices=32, gpus=8, reserved_pages=P4DE_PAGES)
    assert boot.pages == P4DE_PAGES
    assert not (boot.etc / "sysctl.d" / "90-efa-infra.conf").exists()  # nothing that would lower it on the next boot either
    assert f"hugepages: {P4DE_PAGES} reserved, {bootstrap.HUGEPAGES_MIB // 2} needed: left as they are" in boot.log


@pytest.mark.parametrize("reserved", [0, 3000])
def test_nodes_without_efa_reserve_no_hugepages(tmp_path, reserved):
    boot = run_boot(tmp_path, bootstrap.Node("cpu", 0), efa_devices=0, reserved_pages=reserved)
    assert boot.pages == reserved and not (boot.etc / "sysctl.d" / "90-efa-infra.conf").exists()


# --- the boot check acts ----------------------------------------------------------


def test_a_healthy_ec2_node_stays_in_service(tmp_path):
    boot = run_boot(tmp_path, p5(), efa_devices=32, gpus=8)
    assert boot.aws_calls == []
    assert "boot check passed: EFA devices: 32 in /dev/infiniband, 32 expected 8 of 8 gpu accelerators" in boot.log


@pytest.mark.parametrize("efa, gpus, reason", [(31, 8, "efa-31-of-32"), (32, 7, "gpu-7-of-8"), (0, 8, "efa-0-of-32")])
def test_an_ec2_node_missing_a_device_marks_itself_unhealthy_in_its_group(tmp_path, efa, gpus, reason):
    boot = run_boot(tmp_path, p5(), efa_devices=efa, gpus=gpus, aws=fleet_cloud(tmp_path))
    assert boot.aws_calls[-1] == ["autoscaling", "set-instance-health", "--region", REGION, "--instance-id", INSTANCE,
                                  "--health-status", "Unhealthy", "--no-should-respect-grace-period"]
    assert f"boot check FAILED ({reason})" in boot.log
    assert f"boot check: {INSTANCE} marked unhealthy in its Auto Scaling group, which replaces it" in boot.log
    assert not [c for c in boot.aws_calls if "suspend-processes" in c]  # one failure is no pattern


# --- the boot guard: a fleet whose every node fails stops being replaced -------------------------

GROUP = "gpu-asg-3f1e2d4"
SESSION = botocore.session.get_session()


def fleet_cloud(state: Path) -> str:
    """A stand-in AWS for a fleet's nodes, sharing `state` across their boots: the node's group, the guard's metric
    (a line per failed boot, its sum for the window) and the group's suspended processes."""
    return f'''case "$*" in
  *describe-auto-scaling-instances*) echo {GROUP} ;;
  *put-metric-data*) echo 1 >> {state}/failed-boots ;;
  *get-metric-statistics*) if [ -s {state}/failed-boots ]; then echo "$(wc -l < {state}/failed-boots).0"; else echo None; fi ;;
  *suspend-processes*) echo "$*" >> {state}/suspended ;;
esac'''


def request(call: list[str], service: str, operation: str) -> dict:
    """The --cli-input-json request of a recorded AWS CLI call, checked against botocore's model of the operation."""
    body = json.loads(call[call.index("--cli-input-json") + 1])
    report = botocore.validate.ParamValidator().validate(body, SESSION.get_service_model(service).operation_model(operation).input_shape)
    assert not report.has_errors(), report.generate_report()
    return body


def test_a_fleet_whose_every_node_fails_its_boot_check_stops_being_replaced_past_the_threshold(tmp_path):
    """Every node of the fleet boots without its EFA devices (an AMI without the driver, say). The Auto Scaling group
    replaces a node that marks itself unhealthy unless its ReplaceUnhealthy process is suspended."""
    state = tmp_path / "cloud"
    state.mkdir()
    boots: list[Boot] = []
    for i in range(3 * bootstrap.GUARD_FAILURES):
        node_dir = tmp_path / f"node{i}"
        node_dir.mkdir()
        boots.append(run_boot(node_dir, p5(), efa_devices=0, gpus=8, aws=fleet_cloud(state)))
        marked = ["autoscaling", "set-instance-health"] == boots[-1].aws_calls[-1][:2]
        if not marked or (state / "suspended").exists():
            break  # the group keeps this node: no replacement is launched
    assert len(boots) == bootstrap.GUARD_FAILURES  # the churn ends at the threshold's boot
    assert (state / "suspended").read_text().split() == [
        "autoscaling", "suspend-processes", "--region", REGION, "--auto-scaling-group-name", GROUP, "--scaling-processes",
        "ReplaceUnhealthy"]
    last = boots[-1]
    assert f"boot guard: {bootstrap.GUARD_FAILURES} failed boot checks in {GROUP} this window" in last.log
    assert f"{INSTANCE} marked unhealthy in its Auto Scaling group, which keeps it while ReplaceUnhealthy is suspended" in last.log
    assert all("which replaces it" in b.log and "boot guard" not in b.log for b in boots[:-1])
    # Each boot counted itself in the metric the alarm watches, and read the sum of the window it is in.
    for boot in boots:
        put = request(next(c for c in boot.aws_calls if "put-metric-data" in c), "cloudwatch", "PutMetricData")
        assert put == {"Namespace": "efa-infra", "MetricData": [{"MetricName": "BootCheckFailed", "Value": 1, "Unit": "Count",
                                                                 "Dimensions": [{"Name": "AutoScalingGroupName", "Value": GROUP}]}]}
        stats = request(next(c for c in boot.aws_calls if "get-metric-statistics" in c), "cloudwatch", "GetMetricStatistics")
        start, end = (datetime.fromisoformat(stats[k].replace("Z", "+00:00")) for k in ("StartTime", "EndTime"))
        assert (stats["Period"], (end - start).total_seconds(), start.timestamp() % stats["Period"]) == (3600, 3600, 0)
        assert stats["Dimensions"] == put["MetricData"][0]["Dimensions"] and stats["Statistics"] == ["Sum"]


def test_the_boot_guards_alarm_watches_the_metric_the_nodes_count_in():
    run = mocks.run(settings_of(base_doc()), "research")
    alarm = run.one("aws:cloudwatch/metricAlarm:MetricAlarm", "gpu-boot-check").inputs
    assert (alarm["namespace"], alarm["metricName"], alarm["dimensions"]) == (
        "efa-infra", "BootCheckFailed", {"AutoScalingGroupName": "<gpu-asg.name>"})
    assert (alarm["statistic"], alarm["period"], alarm["evaluationPeriods"], alarm["threshold"], alarm["comparisonOperator"]) == (
        "Sum", 3600, 1, bootstrap.GUARD_FAILURES, "GreaterThanOrEqualToThreshold")
    assert alarm["name"] == "efa-infra-research-gpu-boot-check" and alarm["treatMissingData"] == "notBreaching"
    valid = botocore.validate.ParamValidator().validate(
        {"AlarmName": alarm["name"], "AlarmDescription": alarm["alarmDescription"], "Namespace": alarm["namespace"],
         "MetricName": alarm["metricName"], "Dimensions": [{"Name": "AutoScalingGroupName", "Value": "gpu-asg-3f1e2d4"}],
         "Statistic": alarm["statistic"], "Period": int(alarm["period"]), "EvaluationPeriods": int(alarm["evaluationPeriods"]),
         "Threshold": alarm["threshold"], "ComparisonOperator": alarm["comparisonOperator"],
         "TreatMissingData": alarm["treatMissingData"]},
        SESSION.get_service_model("cloudwatch").operation_model("PutMetricAlarm").input_shape)
    assert not valid.has_errors(), valid.generate_report()
    # No boot check, or EKS (whose nodes are tainted, not replaced): no guard.
    off = mocks.run(settings_of(base_doc(fleets=[{**base_doc()["fleets"][0], "bootCheck": False}])), "research")
    assert not off.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
    eks = mocks.run(settings_of(base_doc(eks={"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], **DEPLOYER})), "research")
    assert eks.error is None and not eks.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")


def test_with_boot_check_off_a_bad_node_only_logs(tmp_path):
    boot = run_boot(tmp_path, p5(boot_check=False), efa_devices=31, gpus=8)
    assert boot.aws_calls == [] and "boot check: left in service (bootCheck is false)" in boot.log


def eks_node(**overrides) -> bootstrap.Node:
    return p5(eks=True, max_pods=51, labels={"efa-infra/fleet": "p5"}, taints=[GPU_TAINT], **overrides)


def test_a_healthy_eks_node_registers_as_usual(tmp_path):
    boot = run_boot(tmp_path, eks_node(), efa_devices=32, gpus=8)
    assert not (boot.etc / "eks").exists() and boot.aws_calls == []


def test_an_eks_node_missing_a_device_registers_with_the_boot_check_taint(tmp_path):
    import yaml

    boot = run_boot(tmp_path, eks_node(), efa_devices=30, gpus=8)
    drop_in = yaml.safe_load((boot.etc / "eks" / "nodeadm.d" / "90-efa-infra-boot-check.yaml").read_text())
    assert drop_in["kind"] == "NodeConfig"
    # The node's own taint is kept: the kubelet takes the last --register-with-taints (nodeadm appends drop-ins' flags).
    assert drop_in["spec"]["kubelet"]["flags"] == [
        "--register-with-taints=nvidia.com/gpu=true:NoSchedule,efa-infra/boot-check=efa-30-of-32:NoSchedule",
        "--node-labels=efa-infra/boot-check=failed"]
    assert boot.aws_calls == [] and "registers with the taint efa-infra/boot-check=efa-30-of-32:NoSchedule" in boot.log


# --- what the program asks for -------------------------------------------------------


def test_ec2_nodes_may_mark_health_only_in_their_own_group():
    run = mocks.run(settings_of(base_doc()), "research")
    (health,) = [r for r in run.of_type("aws:iam/rolePolicy:RolePolicy") if r.name == "gpu-health"]
    statement, metric, reads = json.loads(health.inputs["policy"])["Statement"]
    # Marking itself unhealthy, and the boot guard's stopping of replacements: in its own fleet's group only.
    assert statement["Action"] == ["autoscaling:SetInstanceHealth", "autoscaling:SuspendProcesses"]
    assert statement["Condition"] == {"StringEquals": {"autoscaling:ResourceTag/efa-infra:fleet": "gpu",
                                                       "autoscaling:ResourceTag/efa-infra:stack": "research"}}
    # Counting failed boots: in the guard's namespace only; reads (own group, the count) take no resource.
    assert (metric["Action"], metric["Condition"]) == ("cloudwatch:PutMetricData",
                                                       {"StringEquals": {"cloudwatch:namespace": bootstrap.GUARD_NAMESPACE}})
    assert reads["Action"] == ["autoscaling:DescribeAutoScalingInstances", "cloudwatch:GetMetricStatistics"]
    # The group carries the tags the condition names.
    tags = {t["key"]: t["value"] for t in run.one("aws:autoscaling/group:Group").inputs["tags"]}
    assert (tags["efa-infra:fleet"], tags["efa-infra:stack"]) == ("gpu", "research")
    with moto.mock_aws():  # moto checks policy documents as IAM does
        iam = boto3.client("iam", region_name=REGION)
        iam.create_role(RoleName="node", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))
        iam.put_role_policy(RoleName="node", PolicyName="health", PolicyDocument=health.inputs["policy"])
        broken = json.loads(health.inputs["policy"])
        broken["Statement"][0]["Action"] = "autoscaling SetInstanceHealth"
        with pytest.raises(iam.exceptions.MalformedPolicyDocumentException):  # the check is real
            iam.put_role_policy(RoleName="node", PolicyName="broken", PolicyDocument=json.dumps(broken))
    off = mocks.run(settings_of(base_doc(fleets=[{**base_doc()["fleets"][0], "bootCheck": False}])), "research")
    assert not [r for r in off.of_type("aws:iam/rolePolicy:RolePolicy") if r.name == "gpu-health"]
    assert "aws autoscaling set-instance-health" not in bootstrap.boot_script(plan.build(config.load(
        base_doc(fleets=[{**base_doc()["fleets"][0], "bootCheck": False}]))).fleets[0].boot)


def test_devices_that_appear_late_are_waited_for(tmp_path):
    """udev or the NVIDIA driver may make a device node after the script starts: the node is not called short."""
    node = p5(efa_devices=2, accelerator=None)
    late = "(sleep 1; mknod /dev/infiniband/uverbs1 c 231 193) &"
    script = bootstrap.boot_script(node).replace("udevadm settle", late + "\nudevadm settle", 1)
    boot = run_boot(tmp_path, node, efa_devices=1, script=script)
    assert boot.aws_calls == [] and "boot check passed: EFA devices: 2 in /dev/infiniband" in boot.log
