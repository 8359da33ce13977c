"""FSx for Lustre on a fleet: the request against botocore's FSx model, the service's steps and EFA refused where
the fleet cannot carry it, the security group and the flows it allows (and blocks without it), the boot script's
mount run for real as root in a private mount namespace, the CSI driver and static volume on EKS, and day 2."""

from __future__ import annotations

import copy
import dataclasses
import json

import botocore.session
import botocore.validate
import kubernetes_validate
import pytest

from components.planning import bootstrap, config, fsx
from components.offline import diff, flows, mocks
from conftest import ROOT, base_doc, settings_of, stack_run
from test_boot_script import p5, run_boot

FS = "aws:fsx/lustreFileSystem:LustreFileSystem"
DRA = "aws:fsx/dataRepositoryAssociation:DataRepositoryAssociation"


@pytest.fixture
def ec2_fsx() -> mocks.Run:
    return stack_run("ec2-fsx")


@pytest.fixture
def eks_data() -> mocks.Run:
    return stack_run("eks-data")


def create_request(inputs: dict) -> dict:
    """CreateFileSystem as pulumi-aws (terraform-provider-aws resourceLustreFileSystemCreate) builds it from the inputs."""
    lustre = {"DeploymentType": inputs["deploymentType"], "PerUnitStorageThroughput": int(inputs["perUnitStorageThroughput"]),
              "MetadataConfiguration": {"Mode": inputs["metadataConfiguration"]["mode"]},
              "EfaEnabled": inputs["efaEnabled"]}
    return {"FileSystemType": "LUSTRE", "StorageCapacity": int(inputs["storageCapacity"]), "StorageType": inputs["storageType"],
            "SubnetIds": ["subnet-0123456789abcdef0"], "SecurityGroupIds": ["sg-0123456789abcdef0"],
            "KmsKeyId": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "LustreConfiguration": lustre, "Tags": [{"Key": k, "Value": v} for k, v in inputs["tags"].items()]}


def test_the_request_passes_botocores_fsx_model(ec2_fsx, eks_data):
    model = botocore.session.get_session().get_service_model("fsx")
    shape = model.operation_model("CreateFileSystem").input_shape
    for run in (ec2_fsx, eks_data):
        fs = run.one(FS)
        params = create_request(fs.inputs)
        report = botocore.validate.ParamValidator().validate(params, shape)
        assert not report.has_errors(), report.generate_report()
        # The values are among the model's own.
        lustre = shape.members["LustreConfiguration"]
        assert fs.inputs["deploymentType"] in lustre.members["DeploymentType"].enum
        assert fs.inputs["storageType"] in shape.members["StorageType"].enum
        assert fs.inputs["metadataConfiguration"]["mode"] in lustre.members["MetadataConfiguration"].members["Mode"].enum
    broken = create_request(ec2_fsx.one(FS).inputs)
    broken["LustreConfiguration"]["EfaEnable"] = True
    assert botocore.validate.ParamValidator().validate(broken, shape).has_errors()  # the check is real


def test_the_file_system_is_persistent_2_in_the_fleets_subnet_with_efa_on_a_gpudirect_type(ec2_fsx):
    fs = ec2_fsx.one(FS)
    assert fs.inputs["deploymentType"] == "PERSISTENT_2" and fs.inputs["subnetIds"] == "<efa-private-us-east-1a.id>"
    assert fs.inputs["efaEnabled"] is True  # p5.48xlarge does GPUDirect RDMA (aws-ofi-nccl's table)
    assert fs.inputs["securityGroupIds"] == ["<p5-fsx.id>"] and fs.inputs["kmsKeyId"] == "<p5-fsx.arn>"  # its own key
    # The fleet's nodes carry the file system's group on every interface, beside the EFA group.
    lt = ec2_fsx.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert all(i["securityGroups"] == ["<efa-efa.id>", "<p5-fsx.id>"] for i in lt.inputs["networkInterfaces"])


def fleet_doc(fsx_cfg: dict, **fleet) -> dict:
    d = base_doc()
    d["fleets"][0] = {"name": "gpu", "instanceType": "p5.48xlarge", "availabilityZone": "us-east-1a", "nodes": {"desired": 2},
                      "fsx": fsx_cfg, **fleet}
    return d


@pytest.mark.parametrize("itype,efa,expected", [("p5.48xlarge", True, True), ("p5.48xlarge", False, False),
                                                ("p5en.48xlarge", True, True), ("p6-b200.48xlarge", True, True),
                                                ("p5.4xlarge", True, False),  # a GDS family, but no GPUDirect RDMA
                                                ("p4d.24xlarge", True, False),  # not among FSx's GDS types
                                                ("g6.8xlarge", True, False)])
def test_efa_by_default_where_the_type_does_gpudirect(itype, efa, expected):
    cfg = config.load(fleet_doc({"storageGiB": 4800, "throughputPerTiB": 1000}, instanceType=itype, efa=efa))
    from components.planning import plan

    assert plan.build(cfg).fleets[0].fsx_efa is expected


@pytest.mark.parametrize("fleet,words", [({"efa": False}, "has efa: false"),
                                         ({"instanceType": "m6i.large"}, "which has no EFA device"),
                                         ({"instanceType": "trn2.48xlarge"}, "no EFA clients of the trn2 family")])
def test_efa_on_a_file_system_its_fleet_cannot_reach_over_efa_is_refused(fleet, words):
    with pytest.raises(config.ConfigError) as err:
        config.load(fleet_doc({"storageGiB": 4800, "throughputPerTiB": 1000, "efa": True}, **fleet))
    assert "efa-infra:fleets[0].fsx.efa" in str(err.value) and words in str(err.value)
    # A trn1 fleet is an EFA client: asked for, EFA is taken (GDS is not, so it is not the default).
    cfg = config.load(fleet_doc({"storageGiB": 4800, "throughputPerTiB": 1000, "efa": True}, instanceType="trn1.32xlarge"))
    from components.planning import plan

    assert plan.build(cfg).fleets[0].fsx_efa is True


@pytest.mark.parametrize("size,ok", [(1200, True), (2400, True), (4800, True), (9600, True), (1000, False),
                                     (3600, False), (0, False)])
def test_storage_follows_the_services_steps(size, ok):
    problems = fsx.storage_problems(config.FleetConfig.model_validate(
        {"name": "g", "instanceType": "p5.48xlarge", "availabilityZone": "us-east-1a", "nodes": {"desired": 1},
         "fsx": {"storageGiB": size}}).fsx)
    assert (problems == []) is ok


@pytest.mark.parametrize("fsx_cfg,key,words", [
    ({"storageGiB": 2400, "throughputPerTiB": 1000, "efa": True}, "fsx.efa",
     "2400 GiB cannot carry EFA at 1000 MB/s/TiB: an EFA-enabled file system takes multiples of 4800 GiB there"),
    ({"storageGiB": 9600, "throughputPerTiB": 250}, "fsx.storageGiB",  # EFA by default on p5
     "multiples of 19200 GiB there (nearest: 19200; at 1000 MB/s/TiB multiples of 4800); EFA is the default for this "
     "fleet's type: or set fsx.efa: false"),
])
def test_options_that_cannot_carry_efa_are_refused_naming_the_key(fsx_cfg, key, words):
    with pytest.raises(config.ConfigError) as err:
        config.load(fleet_doc(fsx_cfg))
    assert f"efa-infra:fleets[0].{key}: " in str(err.value) and words in str(err.value)
    # The same sizes without EFA are fine; and each tier's EFA step is taken.
    config.load(fleet_doc({**fsx_cfg, "efa": False}))
    for tier, step in ((125, 38400), (250, 19200), (500, 9600), (1000, 4800)):
        config.load(fleet_doc({"storageGiB": 2 * step, "throughputPerTiB": tier}))


def test_a_file_system_takes_at_most_eight_links():
    repos = [{"s3": f"s3://bkt-a/p{i}/", "path": f"/p{i}"} for i in range(9)]
    with pytest.raises(config.ConfigError, match=r"fleets\[0\]\.fsx\.dataRepositories: 9 links; a file system takes at most 8"):
        config.load(fleet_doc({"storageGiB": 1200, "efa": False, "dataRepositories": repos}))
    config.load(fleet_doc({"storageGiB": 1200, "efa": False, "dataRepositories": repos[:8]}))


def test_storage_and_throughput_errors_come_together_naming_the_keys():
    with pytest.raises(config.ConfigError) as err:
        config.load(fleet_doc({"storageGiB": 3000, "throughputPerTiB": 200}))
    text = str(err.value)
    assert "efa-infra:fleets[0].fsx.storageGiB: 3000 GiB" in text and "nearest: 2400 or 4800" in text
    assert "efa-infra:fleets[0].fsx.throughputPerTiB: 200 MB/s/TiB" in text and "125, 250, 500, 1000" in text
    # The steps are botocore's: its model's documentation says them.
    shape = botocore.session.get_session().get_service_model("fsx").shape_for("CreateFileSystemLustreConfiguration")
    assert "For <code>PERSISTENT_2</code> SSD storage: 125, 250, 500, 1000 MB/s/TiB" in shape.members["PerUnitStorageThroughput"].documentation


def test_two_links_to_one_path_are_refused():
    repos = [{"s3": "s3://bkt-a/x/", "path": "/data"}, {"s3": "s3://bkt-b/y/", "path": "/data/"}]
    with pytest.raises(config.ConfigError, match=r"fleets\[0\]\.fsx\.dataRepositories\[1\]\.path: /data is already linked"):
        config.load(fleet_doc({"storageGiB": 1200, "efa": False, "dataRepositories": repos}))


def test_data_repositories_link_the_buckets(eks_data):
    (dra,) = eks_data.of_type(DRA)
    assert dra.inputs["dataRepositoryPath"] == "s3://example-training-data/datasets/"
    assert dra.inputs["fileSystemPath"] == "/datasets" and dra.inputs["fileSystemId"] == "<p5-fsx.id>"
    assert dra.inputs["s3"] == {"autoImportPolicy": {"events": ["NEW", "CHANGED", "DELETED"]}}


# --- the security group and the flows ------------------------------------------------


def test_the_group_admits_lustre_and_efa_within_itself(ec2_fsx):
    rules = {(r.type.split(":")[-1], r.inputs["ipProtocol"], r.inputs.get("fromPort"), r.inputs.get("toPort"))
             for r in ec2_fsx.resources if r.inputs.get("securityGroupId") == "<p5-fsx.id>"}
    assert all(r.inputs["referencedSecurityGroupId"] == "<p5-fsx.id>" for r in ec2_fsx.resources
               if r.inputs.get("securityGroupId") == "<p5-fsx.id>")
    assert rules == {(side, *rule) for side in ("SecurityGroupIngressRule", "SecurityGroupEgressRule")
                     for rule in (("tcp", 988, 988), ("tcp", 1018, 1023), ("-1", None, None))}
    no_efa = mocks.run(settings_of(fleet_doc({"storageGiB": 1200, "efa": False})), "t")
    assert not [r for r in no_efa.resources if r.inputs.get("securityGroupId") == "<gpu-fsx.id>" and r.inputs["ipProtocol"] == "-1"]


def lustre_verdicts(resources) -> dict[str, bool]:
    return {f"{v.need.name}: {v.need.sender} -> {v.need.receiver}": v.allowed
            for v in flows.model(resources).verdicts() if "file system" in v.need.name}


@pytest.mark.parametrize("stack", ["ec2-fsx", "eks-data"])
def test_the_lustre_flows_are_allowed_and_blocked_without_the_fsx_rules(stack, ec2_fsx, eks_data):
    run = {"ec2-fsx": ec2_fsx, "eks-data": eks_data}[stack]
    verdicts = lustre_verdicts(run.resources)
    assert verdicts and all(verdicts.values()), verdicts
    assert {"Lustre LNet, client to file system (TCP 988): p5 node -> p5 file system",
            "Lustre LNet, file system to client (TCP 1018-1023): p5 file system -> p5 node",
            "EFA between clients and the file system (all traffic): p5 node -> p5 file system"} <= set(verdicts)
    without = [r for r in run.resources if not r.name.startswith("p5-fsx-in-")]
    assert not any(lustre_verdicts(without).values())
    # The EFA group alone does not reach the file system: its nodes' own all-traffic rule names only itself.
    only_lnet = [r for r in run.resources if r.name not in ("p5-fsx-in-efa", "p5-fsx-out-efa")]
    assert {k: v for k, v in lustre_verdicts(only_lnet).items() if "EFA" in k} == {
        k: False for k in verdicts if "EFA" in k}


def test_plan_shows_the_lustre_flows():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "components", "plan", "--stack", "ec2-fsx"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ok      Lustre LNet, client to file system (TCP 988): p5 node -> p5 file system" in out.stdout
    assert "FSx for Lustre    4800 GiB, 1000 MB/s/TiB, EFA on, at /fsx (mounted by the boot script)" in out.stdout


# --- mounting --------------------------------------------------------------------------


def fsx_node(tmp_path) -> bootstrap.Node:
    # The mount point under the test's directory: the script makes it, and the machine is left alone.
    return dataclasses.replace(p5(), fsx=fsx.Mount("fs-0123456789abcdef0.fsx.us-east-1.amazonaws.com", "abcdefgh",
                                                   str(tmp_path / "fsx")))


DEVICE = "fs-0123456789abcdef0.fsx.us-east-1.amazonaws.com@tcp:/abcdefgh"


def test_the_boot_script_mounts_the_file_system(tmp_path):
    # A stand-in mount.lustre that records its call: the mount itself would need the Lustre kernel module.
    boot = run_boot(tmp_path, fsx_node(tmp_path), efa_devices=32, gpus=8, stubs={"mount.lustre": "exit 0"})
    path = str(tmp_path / "fsx")
    assert (tmp_path / "bin" / "mount.lustre.calls").read_text().split() == ["-o", "relatime,flock", DEVICE, path]
    assert (tmp_path / "fsx").is_dir() and f"FSx: mounted {DEVICE} on {path}" in boot.log
    # Mounted again at every boot, once the network is up.
    assert (boot.etc / "fstab").read_text().splitlines()[-1] == (
        f"{DEVICE} {path} lustre defaults,relatime,flock,_netdev,x-systemd.automount,"
        "x-systemd.requires=systemd-networkd-wait-online.service 0 0")
    assert "boot check passed" in boot.log


def test_without_a_lustre_client_the_boot_log_says_so(tmp_path):
    boot = run_boot(tmp_path, fsx_node(tmp_path), efa_devices=32, gpus=8)
    assert f"FSx: cannot mount {DEVICE} on {tmp_path / 'fsx'}: no Lustre client (mount.lustre)" in boot.log
    assert "boot check passed" in boot.log  # the node's own check goes on


def test_a_failed_mount_is_logged(tmp_path):
    boot = run_boot(tmp_path, fsx_node(tmp_path), efa_devices=32, gpus=8, stubs={"mount.lustre": "exit 5"})
    assert f"FSx: mounting {DEVICE} on {tmp_path / 'fsx'} FAILED (exit 5)" in boot.log


def test_ec2_user_data_carries_the_mount_and_eks_nodes_leave_it_to_the_csi_driver(ec2_fsx, eks_data):
    import base64

    ec2 = base64.b64decode(ec2_fsx.one("aws:ec2/launchTemplate:LaunchTemplate").inputs["userData"]).decode()
    assert 'local device=<p5-fsx.dnsName>@tcp:/<p5-fsx.mountName> path=/fsx' in ec2
    eks = base64.b64decode(eks_data.one("aws:ec2/launchTemplate:LaunchTemplate").inputs["userData"]).decode()
    assert "fsx_mount" not in eks


def test_eks_gets_the_pinned_csi_driver_and_a_static_volume(eks_data):
    release = eks_data.one("kubernetes:helm.sh/v3:Release", "eks-fsx-csi-driver")
    assert (release.inputs["chart"], release.inputs["version"], release.inputs["repositoryOpts"]["repo"]) == (
        "aws-fsx-csi-driver", "1.17.0", "https://kubernetes-sigs.github.io/aws-fsx-csi-driver")
    assert release.inputs["values"] == {"controller": {"region": "us-east-1"}, "node": {"region": "us-east-1"}}
    volume = eks_data.one("kubernetes:core/v1:PersistentVolume", "p5-fsx")
    spec = volume.inputs["spec"]
    assert spec["csi"] == {"driver": "fsx.csi.aws.com", "volumeHandle": "<p5-fsx.id>",
                           "volumeAttributes": {"dnsname": "<p5-fsx.dnsName>", "mountname": "<p5-fsx.mountName>"}}
    assert (spec["persistentVolumeReclaimPolicy"], spec["accessModes"], spec["capacity"]) == ("Retain", ["ReadWriteMany"],
                                                                                            {"storage": "9600Gi"})
    claim = eks_data.one("kubernetes:core/v1:PersistentVolumeClaim", "p5-fsx")
    assert claim.inputs["spec"]["volumeName"] == "p5-fsx" and claim.inputs["spec"]["storageClassName"] == ""
    # Both as the API server takes them (strict: no unknown field), with AWS's values standing in for placeholders.
    for obj in (volume, claim):
        concrete = json.loads(json.dumps(obj.inputs).replace("<p5-fsx.id>", "fs-0123456789abcdef0")
                              .replace("<p5-fsx.dnsName>", "fs-0123456789abcdef0.fsx.us-east-1.amazonaws.com")
                              .replace("<p5-fsx.mountName>", "abcdefgh"))
        kubernetes_validate.validate(concrete, "1.33.0", strict=True)


# --- day 2 -------------------------------------------------------------------------------


def test_the_file_system_is_a_guarded_kind_replaced_by_its_force_new_inputs():
    before = fleet_doc({"storageGiB": 4800, "throughputPerTiB": 1000})
    after = copy.deepcopy(before)
    after["fleets"][0]["fsx"]["efa"] = False
    runs = [mocks.run(settings_of(d), "t").resources for d in (before, after)]
    changes = {(c.type, c.name): c for c in diff.compare(*runs)}
    fs = changes[(FS, "gpu-fsx")]
    assert (fs.action, fs.because) == ("replace", ["efaEnabled"])
    assert [c.guarded for c in diff.blocked(list(changes.values()))] == ["FSx for Lustre file system"]
    grown = copy.deepcopy(before)
    grown["fleets"][0]["fsx"]["storageGiB"] = 9600
    runs = [mocks.run(settings_of(d), "t").resources for d in (before, grown)]
    assert {(c.action, c.type) for c in diff.compare(*runs)} == {("update", FS)}  # grown in place


def test_production_stacks_protect_the_file_system():
    doc = fleet_doc({"storageGiB": 1200, "efa": False})
    assert mocks.run(settings_of(doc), "prod-eu").one(FS).protect is True
    assert mocks.run(settings_of(doc), "dev").one(FS).protect is False
    assert json.loads(json.dumps(fsx.facts()))["deploymentType"] == "PERSISTENT_2"
