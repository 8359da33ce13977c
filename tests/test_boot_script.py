"""The fleets' boot script, run for real as root in a private mount namespace:
/etc is an overlay whose writes land in a scratch directory, /dev holds
stand-in EFA and GPU device nodes, the kernel's hugepage count is a stand-in
file, and `aws`, `curl` (IMDS) and `fi_info` are stand-ins that record their
calls, so the machine running the tests is left alone."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import boto3
import moto
import pytest

from components.planning import bootstrap, config, plan
from components.offline import mocks
from conftest import base_doc, settings_of, stand_in_devices

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
    """A node waits minutes for late device nodes; here a missing device is missing for good."""
    monkeypatch.setattr(bootstrap, "DEVICE_WAIT", (2, 1))


def run_boot(tmp_path: Path, node: bootstrap.Node, *, efa_devices: int, gpus: int = 0, reserved_pages: int = 0,
             script: str | None = None, stubs: dict[str, str] | None = None) -> Boot:
    """`stubs`: more stand-in commands (name -> sh body), each recording its calls in <bin>/<name>.calls."""
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
    stub(bin_dir, "aws", "exit 0")
    for name, body in (stubs or {}).items():
        stub(bin_dir, name, body)
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
    boot = run_boot(tmp_path, p5(), efa_devices=efa, gpus=gpus)
    assert boot.aws_calls == [["autoscaling", "set-instance-health", "--region", REGION, "--instance-id", INSTANCE,
                               "--health-status", "Unhealthy", "--no-should-respect-grace-period"]]
    assert f"boot check FAILED ({reason})" in boot.log
    assert f"boot check: {INSTANCE} marked unhealthy in its Auto Scaling group, which replaces it" in boot.log


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
    (statement,) = json.loads(health.inputs["policy"])["Statement"]
    assert statement["Action"] == "autoscaling:SetInstanceHealth"
    assert statement["Condition"] == {"StringEquals": {"autoscaling:ResourceTag/efa-infra:fleet": "gpu",
                                                       "autoscaling:ResourceTag/efa-infra:stack": "research"}}
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
