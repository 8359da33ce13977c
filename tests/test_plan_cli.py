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


QUOTED = """config:
  aws:region: us-east-1
  efa-infra:fleets:
    - {name: g6e, instanceType: g6e.48xlarge, availabilityZone: us-east-1a, nodes: {desired: 2}}
    - {name: b200, instanceType: p6-b200.48xlarge, availabilityZone: us-east-1a, nodes: {desired: 2}}
    - {name: trn2, instanceType: trn2.48xlarge, availabilityZone: us-east-1a, nodes: {desired: 2}}
  efa-infra:jobs:
    - {name: train, fleet: trn2, launcher: torchrun, command: [train.py]}
"""


def test_plan_and_types_quote_the_instances_stated_bandwidth(tmp_path):
    """g6e.48xlarge's cards add up to 1600 and p6-b200's to 1600; AWS states 400 and 3200 for the instances."""
    path = tmp_path / "Pulumi.quoted.yaml"
    path.write_text(QUOTED)
    doc = json.loads(plan("--config", str(path), "--json").stdout)
    fleets = {f["name"]: f for f in doc["fleets"]}
    assert (fleets["g6e"]["efaBandwidthGbps"], fleets["g6e"]["networkBandwidthGbps"]) == (400, 400)
    assert (fleets["b200"]["efaBandwidthGbps"], fleets["b200"]["networkBandwidthGbps"]) == (3200, 3200)
    assert "caps them" in fleets["g6e"]["bandwidthNote"] and "shared out" in fleets["b200"]["bandwidthNote"]
    (job,) = doc["jobs"]
    assert job["procsPerNode"] == 64  # trn2.48xlarge: 16 Trainium2 x 8 cores, 2 per logical NeuronCore
    text = plan("--config", str(path)).stdout
    assert "EFA bandwidth     400 of 400 Gbps attached (the instance's stated 400 Gbps" in text
    assert "EFA bandwidth     3200 of 3200 Gbps attached (the instance's stated 3200 Gbps" in text
    assert "2 nodes x 64 processes" in text
    types = subprocess.run([sys.executable, "-m", "components", "types"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    rows = {line.split()[0]: line for line in types.stdout.splitlines() if line.strip()}
    assert rows["g6e.48xlarge"].split()[3:6] == ["400", "of", "400"]  # columns: type cards EFA | EFA Gbps of all Gbps
    assert rows["p6-b200.48xlarge"].split()[3:6] == ["3200", "of", "3200"]


def test_a_jobs_only_stack_loads_no_pulumi_aws():
    """A stack that only renders jobs for clusters it does not manage registers no AWS resource, so its plan leaves
    pulumi-aws (its largest import) unloaded: the resources that need it import it where they are created."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "components", "plan", "--stack", "hyperpod-jobs"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "components.offline.mocks" in loaded  # the import log is there to be read
    assert "pulumi_aws" not in loaded


def test_the_plan_does_not_follow_the_order_of_protobuf_maps():
    """Inputs reach the mocks through protobuf Structs, whose maps protobuf 6 iterates in a different order from
    run to run: the recorded inputs, which every plan format prints, have their keys sorted at every depth."""
    import pulumi

    from components.offline import mocks

    recorded = mocks.PlanMocks({})
    for name, order in (("a", ["version", "id"]), ("b", ["id", "version"])):
        inputs = {"tags": {"z": "1", "a": "2"}, "launchTemplate": {k: k for k in order}, "blocks": [{k: k for k in order}]}
        recorded.new_resource(pulumi.runtime.MockResourceArgs("aws:autoscaling/group:Group", name, dict(reversed(inputs.items()))
                                                              if name == "b" else inputs, custom=True))
    a, b = (recorded.inputs[("aws:autoscaling/group:Group", n)][0] for n in ("a", "b"))
    assert json.dumps(a) == json.dumps(b)
    assert list(a) == ["blocks", "launchTemplate", "tags"] and list(a["launchTemplate"]) == ["id", "version"]
    assert list(a["blocks"][0]) == ["id", "version"] and list(a["tags"]) == ["a", "z"]
