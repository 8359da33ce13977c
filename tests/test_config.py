"""Stack config validation: every problem at once, named by key, nothing registered."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from components.planning import config
from components.offline import mocks
from conftest import DEPLOYER, ROOT, base_doc, settings_of


def fleet(**changes) -> dict:
    f = copy.deepcopy(base_doc()["fleets"][0])
    f.update(changes)
    return f


JOB = {"name": "train", "fleet": "gpu", "launcher": "torchrun", "command": ["train.py"]}
EKS = {"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], **DEPLOYER}

# (case, document, the key the error must name)
INVALID = [
    ("unknown instance type", base_doc(fleets=[fleet(instanceType="p5.48xlarg")]), "efa-infra:fleets[0].instanceType"),
    ("EFA on a type without EFA", base_doc(fleets=[fleet(instanceType="m5.large")]), "efa-infra:fleets[0].efa"),
    ("AZ outside the region", base_doc(fleets=[fleet(availabilityZone="us-west-2a")]), "efa-infra:fleets[0].availabilityZone"),
    ("min above desired", base_doc(fleets=[fleet(nodes={"min": 3, "desired": 2})]), "efa-infra:fleets[0].nodes"),
    ("desired above max", base_doc(fleets=[fleet(nodes={"desired": 4, "max": 2})]), "efa-infra:fleets[0].nodes"),
    ("node count not a number", base_doc(fleets=[fleet(nodes={"desired": "two"})]), "efa-infra:fleets[0].nodes.desired"),
    ("unknown region", base_doc(region="us-east-9"), "aws:region"),
    ("missing region", {k: v for k, v in base_doc().items() if k != "region"}, "aws:region"),
    ("VPC CIDR not a CIDR", base_doc(network={"vpcCidr": "10.0.0.0/33"}), "efa-infra:network.vpcCidr"),
    ("VPC larger than AWS allows", base_doc(network={"vpcCidr": "10.0.0.0/8"}), "efa-infra:network.vpcCidr"),
    ("fleet too big for its subnet", base_doc(network={"vpcCidr": "10.0.0.0/22"}, fleets=[fleet(nodes={"desired": 2, "max": 400})]),
     "efa-infra:fleets[0].nodes.max"),
    ("job on a fleet that does not exist", base_doc(jobs=[{**JOB, "fleet": "gpus"}]), "efa-infra:jobs[0].fleet"),
    ("job wider than its fleet", base_doc(jobs=[{**JOB, "nodes": 3}]), "efa-infra:jobs[0].nodes"),
    ("capacity reservation with a new placement group",
     base_doc(fleets=[fleet(capacity={"type": "reservation", "reservationId": "cr-0123456789abcdef0"}, placement={"mode": "cluster"})]),
     "efa-infra:fleets[0].placement.mode"),
    ("reservation without its id", base_doc(fleets=[fleet(capacity={"type": "capacity-block"})]), "efa-infra:fleets[0].capacity.reservationId"),
    ("existing placement group without a name", base_doc(fleets=[fleet(placement={"mode": "existing"})]), "efa-infra:fleets[0].placement.groupName"),
    ("misspelt fleet key", base_doc(fleets=[{**fleet(), "instanceTyp": "p5.48xlarge"}]), "efa-infra:fleets[0].instanceTyp"),
    ("misspelt section", {**base_doc(), "fleet": []}, "efa-infra:fleet"),
    ("unknown EFA layout", base_doc(fleets=[fleet(efaLayout="efa-everywhere")]), "efa-infra:fleets[0].efaLayout"),
    ("fleet name with capitals", base_doc(fleets=[fleet(name="GPU")]), "efa-infra:fleets[0].name"),
    ("two fleets of one name", base_doc(fleets=[fleet(), fleet(availabilityZone="us-east-1b")]), "efa-infra:fleets[1].name"),
    ("EKS without its AZs", base_doc(eks={"enabled": True}), "efa-infra:eks.availabilityZones"),
    ("job on EKS without an image", base_doc(eks=EKS, jobs=[JOB]), "efa-infra:jobs[0].image"),
    ("AMI id malformed", base_doc(fleets=[fleet(ami="ubuntu-22.04")]), "efa-infra:fleets[0].ami"),
    ("root volume too small", base_doc(fleets=[fleet(rootVolumeGiB=8)]), "efa-infra:fleets[0].rootVolumeGiB"),
    ("NAT mode unknown", base_doc(network={"natGateways": "two"}), "efa-infra:network.natGateways"),
    ("public endpoint CIDR malformed", base_doc(eks={"publicAccessCidrs": ["everyone"]}), "efa-infra:eks.publicAccessCidrs"),
    ("EFA job on a fleet without EFA", base_doc(fleets=[fleet(efa=False)], jobs=[JOB]), "efa-infra:jobs[0].efa"),
    ("/dev/shm larger than a pod may use",
     base_doc(eks=EKS, jobs=[{**JOB, "image": "train:1", "shmSize": "128Gi"}]),
     "efa-infra:jobs[0].shmSize"),
    ("env name with a dash", base_doc(jobs=[{**JOB, "env": {"NCCL-DEBUG": "INFO"}}]), "efa-infra:jobs[0].env"),
    ("MPIJob for torchrun", base_doc(jobs=[{**JOB, "kind": "mpijob"}]), "efa-infra:jobs[0]"),
    ("env quieting NCCL under the transport check", base_doc(jobs=[{**JOB, "env": {"NCCL_DEBUG": "WARN"}}]),
     "efa-infra:jobs[0].env.NCCL_DEBUG"),
    ("monitoring agent on a joined cluster",
     base_doc(eks={"enabled": True, "existing": {"clusterName": "ml"}, "nodeMonitoringAgent": True}),
     "efa-infra:eks.nodeMonitoringAgent"),
    ("declared type without card 0",
     base_doc(instanceTypes={"p9.48xlarge": {"vcpus": 192, "memoryMiB": 2097152, "maximumNetworkInterfaces": 2,
                                             "ipv4AddressesPerInterface": 50, "maximumEfaInterfaces": 1,
                                             "networkCards": [{"index": 1, "maximumNetworkInterfaces": 2,
                                                               "interfaceTypes": ["interface", "efa-only"],
                                                               "baselineBandwidthGbps": 400}]}}),
     "efa-infra:instanceTypes.p9.48xlarge"),
]


def test_there_are_at_least_twenty_cases():
    assert len(INVALID) >= 20


@pytest.mark.parametrize("case,doc,key", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_config_names_the_key_and_registers_nothing(case, doc, key):
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    assert any(p.path == key or p.path.startswith(key + ".") or p.path.startswith(key + "[") for p in err.value.problems), err.value
    # The program under Pulumi's mocks: the clean error `pulumi up` prints, and zero resources.
    run = mocks.run(settings_of(doc), "test")
    assert run.error and key in run.error
    assert "Traceback" not in run.error
    assert run.resources == []


@pytest.mark.parametrize("case,doc,key", INVALID[:4], ids=[c[0] for c in INVALID[:4]])
def test_cli_prints_the_error_without_traceback(tmp_path, case, doc, key):
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(yaml.safe_dump({"config": settings_of(doc)}))
    result = subprocess.run([sys.executable, "-m", "components", "plan", "--config", str(path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert key in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("shm,ok", [("104Gi", True), ("106496Mi", True), ("105Gi", False), ("106497Mi", False)])
def test_shm_fits_in_what_a_pod_may_use(shm, ok):
    # g6.8xlarge: 128 GiB, less 5 GiB of hugepages, 85% of the rest = 104 GiB for the pod.
    doc = base_doc(eks=EKS, jobs=[{**JOB, "image": "train:1", "shmSize": shm}])
    if ok:
        assert config.load(doc).jobs[0].shm_size == shm
        return
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    assert [p.path for p in err.value.problems] == ["efa-infra:jobs[0].shmSize"]
    assert f"{shm!r} is more than the 104Gi a pod may use on g6.8xlarge" in str(err.value)


def test_shm_is_not_checked_where_no_pod_runs():
    # On plain EC2 the node script runs on the host: shmSize does not apply.
    assert config.load(base_doc(jobs=[{**JOB, "shmSize": "512Gi"}])).jobs[0].shm_size == "512Gi"


def test_every_problem_is_reported_at_once():
    doc = base_doc(region="us-east-1", network={"natGateways": "two"},
                   fleets=[fleet(instanceType="m5.large"), fleet(name="b", availabilityZone="eu-west-1a", nodes={"desired": -1})],
                   jobs=[{**JOB, "fleet": "nope"}])
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    paths = {p.path for p in err.value.problems}
    assert {"efa-infra:network.natGateways", "efa-infra:fleets[0].efa", "efa-infra:fleets[1].availabilityZone",
            "efa-infra:fleets[1].nodes.desired", "efa-infra:jobs[0].fleet"} <= paths


def test_errors_say_the_bad_value_and_what_is_valid():
    with pytest.raises(config.ConfigError) as err:
        config.load(base_doc(fleets=[fleet(instanceType="p5.48xlarg", placment={})]))
    text = str(err.value)
    assert "'p5.48xlarg'" in text and "did you mean 'p5.48xlarge'" in text
    assert "did you mean 'placement'" in text and "Valid keys here: name, instanceType" in text


def test_a_declared_instance_type_is_used_for_the_layout():
    spec = {"vcpus": 192, "memoryMiB": 2097152, "maximumNetworkInterfaces": 4, "ipv4AddressesPerInterface": 50,
            "maximumEfaInterfaces": 2,
            "networkCards": [{"index": 0, "maximumNetworkInterfaces": 2, "interfaceTypes": ["interface", "efa", "efa-only"], "baselineBandwidthGbps": 400},
                             {"index": 1, "maximumNetworkInterfaces": 2, "interfaceTypes": ["interface", "efa", "efa-only"], "baselineBandwidthGbps": 400}],
            "accelerator": {"kind": "gpu", "name": "X200", "count": 8}}
    cfg = config.load(base_doc(instanceTypes={"p9.48xlarge": spec}, fleets=[fleet(instanceType="p9.48xlarge")]))
    from components.planning import efa
    assert efa.network_interfaces(cfg.catalog().get("p9.48xlarge")) == [
        {"NetworkCardIndex": 0, "DeviceIndex": 0, "InterfaceType": "interface"},
        {"NetworkCardIndex": 0, "DeviceIndex": 1, "InterfaceType": "efa-only"},
        {"NetworkCardIndex": 1, "DeviceIndex": 0, "InterfaceType": "efa-only"},
    ]


def test_engine_config_arrives_as_json_text():
    """Under `pulumi up` structured values reach the program as JSON strings."""
    settings = mocks.engine_settings(settings_of(base_doc()))
    assert isinstance(settings["efa-infra:fleets"], str)
    cfg = config.load(config.document_from_settings(settings))
    assert cfg.fleets[0].instance_type == "g6.8xlarge"


def test_a_reservation_defaults_to_no_placement_group():
    cfg = config.load(base_doc(fleets=[fleet(capacity={"type": "reservation", "reservationId": "cr-0123456789abcdef0"})]))
    assert cfg.fleets[0].placement_mode == "none"
    assert config.load(base_doc()).fleets[0].placement_mode == "cluster"
