"""Secure defaults on the AWS side (issue 13), each with the option a team may need: flow logs, the emptied
default security group, no public IPs on launch, IMDS hop limit 1, EKS control-plane logs, the secrets key's
policy. Each default is asserted on what the program registers, and each option in its other setting."""

from __future__ import annotations

import json

import pytest

from components.planning import config
from components.offline import mocks
from conftest import DEPLOYER, base_doc, settings_of

FLOW_LOG, LOG_GROUP = "aws:ec2/flowLog:FlowLog", "aws:cloudwatch/logGroup:LogGroup"
ROLE, ROLE_POLICY = "aws:iam/role:Role", "aws:iam/rolePolicy:RolePolicy"
DEFAULT_SG, SUBNET, LT = "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup", "aws:ec2/subnet:Subnet", "aws:ec2/launchTemplate:LaunchTemplate"
EKS, KEY = "eks:index:Cluster", "aws:kms/key:Key"


def run(**overrides) -> mocks.Run:
    r = mocks.run(settings_of(base_doc(**overrides)), "t")
    assert r.error is None, r.error
    return r


def eks_doc(**eks) -> dict:
    return dict(network={"availabilityZones": ["us-east-1b"]}, eks={"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], **DEPLOYER, **eks})


def test_flow_logs_go_to_a_log_group_of_ours_through_a_role_that_writes_only_there():
    r = run()
    flow = r.one(FLOW_LOG).inputs
    group = r.one(LOG_GROUP, "efa-flow-logs")
    assert flow["trafficType"] == "ALL" and flow["logDestinationType"] == "cloud-watch-logs"
    assert flow["vpcId"] == "<efa-vpc.id>" and flow["logDestination"] == f"<{group.name}.arn>"
    assert group.inputs["retentionInDays"] == 365
    role = r.one(ROLE, "efa-flow-logs")
    trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]
    assert trust["Principal"] == {"Service": "vpc-flow-logs.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": "<aws.accountId>"}}
    assert flow["iamRoleArn"] == f"<{role.name}.arn>"
    writes, describe = json.loads(r.one(ROLE_POLICY, "efa-flow-logs").inputs["policy"])["Statement"]
    assert writes["Resource"] == f"<{group.name}.arn>:*" and "logs:PutLogEvents" in writes["Action"]
    assert describe["Action"] == "logs:DescribeLogGroups"


def flow_log_groups(r) -> list:
    """The VPC's flow-log group (each plain EC2 fleet has a log group of its own, for run output)."""
    return [g for g in r.of_type(LOG_GROUP) if g.name == "efa-flow-logs"]


def test_flow_logs_to_a_bucket_or_none():
    r = run(network={"flowLogs": {"destination": "s3", "bucketArn": "arn:aws:s3:::ml-logs/vpc"}})
    flow = r.one(FLOW_LOG).inputs
    assert flow["logDestinationType"] == "s3" and flow["logDestination"] == "arn:aws:s3:::ml-logs/vpc"
    assert "iamRoleArn" not in flow and not flow_log_groups(r) and not [p for p in r.of_type(ROLE_POLICY) if p.name == "efa-flow-logs"]
    r = run(network={"flowLogs": {"destination": "none"}})
    assert not r.of_type(FLOW_LOG) and not flow_log_groups(r)
    r = run(network={"flowLogs": {"retentionDays": 30}})
    assert r.one(LOG_GROUP, "efa-flow-logs").inputs["retentionInDays"] == 30


@pytest.mark.parametrize("flow_logs, key", [
    ({"destination": "s3"}, "flowLogs"),
    ({"bucketArn": "arn:aws:s3:::ml-logs"}, "flowLogs"),
    ({"destination": "s3", "bucketArn": "s3://ml-logs"}, "flowLogs.bucketArn"),
    ({"retentionDays": 100}, "flowLogs.retentionDays"),
])
def test_flow_log_settings_that_cannot_work_are_config_errors(flow_logs, key):
    with pytest.raises(config.ConfigError) as err:
        config.load(base_doc(network={"flowLogs": flow_logs}))
    assert [p.path for p in err.value.problems] == [f"efa-infra:network.{key}"]


def test_flow_log_settings_for_an_existing_vpc_are_refused():
    doc = base_doc(network={"existing": {"vpcId": "vpc-0123456789abcdef0", "privateSubnetIds": {"us-east-1a": "subnet-0a1b2c3d4e5f60718"}},
                            "flowLogs": {"destination": "none"}})
    with pytest.raises(config.ConfigError, match="flowLogs"):
        config.load(doc)


def test_the_default_security_group_is_emptied():
    sg = run().one(DEFAULT_SG).inputs
    assert sg["vpcId"] == "<efa-vpc.id>"
    assert not {"ingress", "egress"} & set(sg)  # no rules: pulumi-aws removes every rule of the default group


def test_public_subnets_assign_no_public_ips_unless_asked():
    public = [s.inputs for s in run().of_type(SUBNET) if s.inputs["tags"]["efa-infra:subnet"] == "public"]
    assert public and all(s["mapPublicIpOnLaunch"] is False for s in public)
    r = run(network={"publicIpOnLaunch": True})
    by_kind = {s.inputs["tags"]["efa-infra:subnet"]: s.inputs["mapPublicIpOnLaunch"] for s in r.of_type(SUBNET)}
    assert by_kind == {"public": True, "private": False}


def test_imds_hop_limit_is_one_unless_asked():
    assert run().one(LT).inputs["metadataOptions"]["httpPutResponseHopLimit"] == 1
    doc = base_doc()
    doc["fleets"][0]["metadataHopLimit"] = 2
    r = mocks.run(settings_of(doc), "t")
    assert r.one(LT).inputs["metadataOptions"]["httpPutResponseHopLimit"] == 2
    doc["fleets"][0]["metadataHopLimit"] = 0
    with pytest.raises(config.ConfigError, match=r"fleets\[0\].metadataHopLimit"):
        config.load(doc)


def test_eks_sends_every_control_plane_log_type_unless_asked():
    assert run(**eks_doc()).one(EKS).inputs["enabledClusterLogTypes"] == ["api", "audit", "authenticator", "controllerManager", "scheduler"]
    assert run(**eks_doc(logTypes=["audit"])).one(EKS).inputs["enabledClusterLogTypes"] == ["audit"]
    assert "enabledClusterLogTypes" not in run(**eks_doc(logTypes=[])).one(EKS).inputs
    with pytest.raises(config.ConfigError, match="logTypes"):
        config.load(base_doc(**eks_doc(logTypes=["kubelet"])))


def test_the_secrets_key_has_a_key_policy_for_its_account():
    policy = json.loads(run(**eks_doc()).one(KEY).inputs["policy"])
    (statement,) = policy["Statement"]
    assert statement["Principal"] == {"AWS": "arn:aws:iam::<aws.accountId>:root"}
    assert statement["Action"] == "kms:*" and statement["Effect"] == "Allow"


# --- jobs: images and namespaces ------------------------------------------------------------------------------

JOB = {"name": "train", "fleet": "gpu", "launcher": "torchrun", "command": ["train.py"], "image": "public.ecr.aws/example/train:2026.11"}


def eks_job_doc(job: dict | None = None, **eks) -> dict:
    return base_doc(**eks_doc(**eks), jobs=[{**JOB, **(job or {})}])


@pytest.mark.parametrize("image", ["public.ecr.aws/example/train:latest", "public.ecr.aws/example/train", "localhost:5000/train"])
def test_latest_and_untagged_images_are_refused(image):
    with pytest.raises(config.ConfigError) as err:
        config.load(eks_job_doc({"image": image}))
    (problem,) = err.value.problems
    assert problem.path == "efa-infra:jobs[0].image" and "does not pin the image" in problem.message and image in str(problem)


@pytest.mark.parametrize("image", ["public.ecr.aws/example/train:2026.11", "localhost:5000/train:1",
                                   "public.ecr.aws/example/train@sha256:" + "0" * 64])
def test_tags_and_digests_are_accepted(image):
    assert config.load(eks_job_doc({"image": image})).jobs[0].image == image


def test_jobs_go_to_a_namespace_the_stack_creates_labelled_for_efa():
    r = run(**eks_job_doc())
    (ns,) = r.of_type("kubernetes:core/v1:Namespace")
    assert ns.inputs["metadata"] == {"name": "efa-jobs", "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}
    assert config.load(eks_job_doc()).jobs[0].namespace == "efa-jobs"


def test_other_namespaces_are_a_cluster_setting():
    r = run(**eks_job_doc({"namespace": "research"}, namespaces=["research", "efa-jobs"]))
    assert sorted(n.inputs["metadata"]["name"] for n in r.of_type("kubernetes:core/v1:Namespace")) == ["efa-jobs", "research"]
    with pytest.raises(config.ConfigError) as err:
        config.load(eks_job_doc({"namespace": "research"}))
    assert [p.path for p in err.value.problems] == ["efa-infra:jobs[0].namespace"]
    assert "efa-infra:eks.namespaces" in str(err.value)
    assert config.load(eks_job_doc({"namespace": "default"})).jobs[0].namespace == "default"  # exists already
    for bad in (["default"], ["kube-system"], ["Research"]):
        with pytest.raises(config.ConfigError, match=r"eks.namespaces"):
            config.load(eks_job_doc(namespaces=bad))


def test_applied_manifests_wait_for_their_namespace():
    r = run(**eks_job_doc({"apply": True}))
    (group,) = r.of_type("kubernetes:yaml/v2:ConfigGroup")
    (ns,) = r.of_type("kubernetes:core/v1:Namespace")
    assert ns.urn in group.depends_on


# --- jobs: what their pods may do --------------------------------------------------------------------------

from components.planning import launch  # noqa: E402
from components.offline import scan  # noqa: E402

KINDS = [("indexed-job", "torchrun"), ("pytorchjob", "torchrun"), ("mpijob", "nccl-tests")]


def manifests(job: dict | None = None, **eks) -> list[dict]:
    cfg = config.load(base_doc(**eks_doc(operators=["training-operator", "mpi-operator"], **eks),
                               fleets=[{"name": "gpu", "instanceType": "p5.48xlarge", "availabilityZone": "us-east-1a",
                                        "nodes": {"desired": 2}}],
                               jobs=[{**JOB, **(job or {})}]))
    return launch.render_manifests(cfg, cfg.jobs[0])


def pods(docs: list[dict]) -> dict[str, dict]:
    """Every pod a job's objects make, by name: the Job's template, or the operator's pods."""
    out = {}
    for d in docs:
        if d["kind"] == "Job":
            out["node"] = d["spec"]["template"]["spec"]
        for p in scan.operator_pods(d):
            out[p["metadata"]["name"].removeprefix("train-")] = p["spec"]
    return out


def kind(k: str, launcher: str) -> dict:
    return {"kind": k, "launcher": launcher, **({"command": []} if launcher == "nccl-tests" else {})}


@pytest.mark.parametrize("k, launcher", KINDS)
def test_every_pod_is_guaranteed_qos(k, launcher):
    for name, spec in pods(manifests(kind(k, launcher))).items():
        for c in spec["containers"]:
            r = c["resources"]
            assert r["requests"] == r["limits"] and {"cpu", "memory"} <= set(r["limits"]), (name, r)
    if k == "mpijob":
        launcher_pod = pods(manifests(kind(k, launcher)))["launcher"]
        assert launcher_pod["containers"][0]["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    node = next(s for n, s in pods(manifests(kind(k, launcher))).items() if n != "launcher")
    assert node["containers"][0]["resources"]["limits"]["cpu"] == "172"  # 90% of a p5.48xlarge's 192 vCPUs


@pytest.mark.parametrize("k, launcher", KINDS)
def test_every_pod_has_least_privilege(k, launcher):
    for name, spec in pods(manifests(kind(k, launcher))).items():
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
        (c,) = spec["containers"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        caps = c["securityContext"]["capabilities"]
        assert caps["drop"] == ["ALL"]
        expected = ([] if name == "launcher" else ["IPC_LOCK", *launch.SSHD_CAPABILITIES] if k == "mpijob"
                    else ["IPC_LOCK"])
        assert caps.get("add", []) == expected, name


def test_seccomp_can_be_unconfined():
    for spec in pods(manifests({"seccompProfile": "Unconfined"})).values():
        assert spec["securityContext"] == {"seccompProfile": {"type": "Unconfined"}}


def test_mpi_workers_are_ready_when_sshd_listens():
    worker = pods(manifests(kind("mpijob", "nccl-tests")))["worker"]["containers"][0]
    assert worker["readinessProbe"] == {"tcpSocket": {"port": 22}, "periodSeconds": 5}
    assert "/usr/sbin/sshd -De" in worker["command"][-1]  # sshd's own port: 22


@pytest.mark.parametrize("k, launcher", KINDS)
def test_every_object_goes_to_the_jobs_namespace(k, launcher):
    assert {d["metadata"]["namespace"] for d in manifests(kind(k, launcher))} == {"efa-jobs"}
    docs = manifests({**kind(k, launcher), "namespace": "research"}, namespaces=["research"])
    assert {d["metadata"]["namespace"] for d in docs} == {"research"}


def test_tags_are_pulled_always_and_digests_once():
    assert {c["imagePullPolicy"] for s in pods(manifests()).values() for c in s["containers"]} == {"Always"}
    digest = "public.ecr.aws/example/train@sha256:" + "0" * 64
    (c,) = pods(manifests({"image": digest}))["node"]["containers"]
    assert (c["image"], c["imagePullPolicy"]) == (digest, "IfNotPresent")
