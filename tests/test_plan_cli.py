"""The offline plan as a user runs it: `python -m components plan`."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "components", "plan", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_dev_plan_json_has_resources_fleets_and_jobs():
    result = plan("--stack", "dev", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert {"resources", "fleets", "jobs"} <= set(doc)
    types = {r["type"] for r in doc["resources"]}
    assert {"aws:ec2/vpc:Vpc", "aws:ec2/launchTemplate:LaunchTemplate", "aws:autoscaling/group:Group"} <= types
    lt = next(r for r in doc["resources"] if r["type"] == "aws:ec2/launchTemplate:LaunchTemplate")
    assert lt["parent"] == "gpu" and lt["inputs"]["instanceType"] == "g6.8xlarge"
    (gpu,) = doc["fleets"]
    assert (gpu["nodes"], gpu["efaDevicesPerNode"], gpu["privateIpsPerNode"]) == ({"min": 0, "desired": 2, "max": 2}, 1, 1)
    assert gpu["subnet"]["need"] == 2 and gpu["subnet"]["capacity"] == 507


def test_dev_plan_text_shows_what_a_person_checks():
    result = plan("--stack", "dev")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "no AWS call was made" in out
    assert "1 of 1 devices per node, layout ena-primary" in out
    assert "EFA bandwidth     25 of 25 Gbps attached" in out
    assert "room for 507, needs 2 at max nodes" in out
    assert "aws:ec2/launchTemplate:LaunchTemplate  gpu-lt" in out
    assert "<efa-vpc.id>" in out  # an AWS-assigned value shown as such


def test_unknown_stack_is_a_clean_error():
    result = plan("--stack", "nope")
    assert result.returncode == 1
    assert "no such stack file" in result.stderr and "Traceback" not in result.stderr


def test_the_plan_lists_resources_in_a_fixed_order():
    """The SDK registers from a thread pool: without a fixed order, two plans of one stack differ."""
    doc = json.loads(plan("--stack", "prod", "--json").stdout)
    urns = [r["urn"] for r in doc["resources"]]
    assert urns == sorted(urns) and len(urns) > 40
