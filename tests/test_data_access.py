"""Jobs' S3 access: the policy derived from the locations a job names, evaluated by moto's IAM as S3 requests
signed with a principal that holds it; EKS Pod Identity (agent, role, association, the pods on the job's service
account); the node role on plain EC2; a joined cluster; the paths jobs are given; config refusals."""

from __future__ import annotations

import copy
import json

import boto3
import moto
import pytest
from botocore.exceptions import ClientError
from moto.core import set_initial_no_auth_action_count

from components.planning import config, data_access, launch
from components.offline import mocks
from conftest import DEPLOYER, ROOT, base_doc, settings_of, stack_run
from test_existing import doc as existing_doc, lookups as existing_lookups
from test_launch import check_manifest, pod_templates, schema_versions

REGION = "us-east-1"
POLICY = "aws:iam/rolePolicy:RolePolicy"
ASSOCIATION = "aws:eks/podIdentityAssociation:PodIdentityAssociation"


@pytest.fixture
def eks_data() -> mocks.Run:
    return stack_run("eks-data")


# --- the policy, evaluated ---------------------------------------------------------


def s3_verdicts(policy: str, requests: list[tuple[str, str, str]]) -> list[str]:
    """What moto's IAM answers to each (operation, bucket, key) made by a principal holding only `policy`:
    'ok' or the error code. The objects exist (created before authorization is enforced)."""
    buckets = sorted({b for _, b, _ in requests})
    keys = sorted({(b, k) for _, b, k in requests})
    setup = len(buckets) + len(keys) + 3  # buckets, objects, the user, its policy and its key, all unauthenticated

    @set_initial_no_auth_action_count(setup)
    def run() -> list[str]:
        s3, iam = boto3.client("s3", region_name=REGION), boto3.client("iam", region_name=REGION)
        for b in buckets:
            s3.create_bucket(Bucket=b)
        for b, k in keys:
            s3.put_object(Bucket=b, Key=k, Body=b"x")
        iam.create_user(UserName="job")
        iam.put_user_policy(UserName="job", PolicyName="data", PolicyDocument=policy)
        key = iam.create_access_key(UserName="job")["AccessKey"]
        job = boto3.client("s3", region_name=REGION, aws_access_key_id=key["AccessKeyId"],
                           aws_secret_access_key=key["SecretAccessKey"])
        out = []
        for op, b, k in requests:
            try:
                if op == "get":
                    job.get_object(Bucket=b, Key=k)
                elif op == "put":
                    job.put_object(Bucket=b, Key=k, Body=b"y")
                else:
                    job.delete_object(Bucket=b, Key=k)
                out.append("ok")
            except ClientError as exc:
                out.append(exc.response["Error"]["Code"])
        return out

    with moto.mock_aws():
        return run()


def test_the_job_policy_allows_exactly_the_named_prefixes(eks_data):
    """The example stack's job reads s3://example-training-data/tokenizers/ and writes s3://example-training-results/finetune/."""
    (policy,) = [r for r in eks_data.of_type(POLICY) if r.name == "finetune-data"]
    data, results = "example-training-data", "example-training-results"
    cases = {
        ("get", data, "tokenizers/bpe.json"): "ok",  # an allowed key
        ("get", data, "tokenizers/v2/merges.txt"): "ok",  # deeper under the prefix
        ("get", data, "datasets/shard-0"): "AccessDenied",  # the same bucket, another prefix
        ("get", data, "tokenizers-old/bpe.json"): "AccessDenied",  # a prefix that only starts alike
        ("put", data, "tokenizers/bpe.json"): "AccessDenied",  # read-only
        ("get", "another-bucket", "tokenizers/bpe.json"): "AccessDenied",  # another bucket
        ("put", results, "finetune/step-100/model.pt"): "ok",  # read-write
        ("delete", results, "finetune/step-100/model.pt"): "ok",
        ("put", results, "pretrain/step-100/model.pt"): "AccessDenied",
    }
    assert s3_verdicts(policy.inputs["policy"], list(cases)) == list(cases.values())


def test_the_moto_check_denies_what_a_wider_policy_would_allow(eks_data):
    """The evaluation is real: a policy wildcarded to the bucket lets the other prefix through."""
    (policy,) = [r for r in eks_data.of_type(POLICY) if r.name == "finetune-data"]
    wide = json.loads(policy.inputs["policy"])
    for st in wide["Statement"]:
        if st["Action"] != "s3:ListBucket" and isinstance(st["Resource"], str) and st["Resource"].endswith("/tokenizers/*"):
            st["Resource"] = st["Resource"].replace("/tokenizers/*", "/*")
    assert s3_verdicts(json.dumps(wide), [("get", "example-training-data", "datasets/shard-0")]) == ["ok"]


def test_listing_and_kms_are_scoped_too():
    locs = [config.JobConfig.model_validate({"name": "j", "fleet": "f", "launcher": "torchrun", "command": ["t.py"], "s3": [
        {"uri": "s3://bkt-a/data/", "access": "read-only"},
        {"uri": "s3://bkt-b", "access": "read-write", "kmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/abcd-1234"},
    ]}).s3]
    doc = data_access.policy(locs[0], "us-east-1")
    statements = doc["Statement"]
    listing_a = next(s for s in statements if s["Action"] == "s3:ListBucket" and s["Resource"] == "arn:aws:s3:::bkt-a")
    assert listing_a["Condition"] == {"StringLike": {"s3:prefix": ["data", "data/*"]}}
    listing_b = next(s for s in statements if s["Action"] == "s3:ListBucket" and s["Resource"] == "arn:aws:s3:::bkt-b")
    assert "Condition" not in listing_b  # the whole bucket was named
    kms = next(s for s in statements if s["Resource"].startswith("arn:aws:kms"))
    assert kms["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert kms["Condition"] == {"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}}
    resources = {r for s in statements for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])}
    assert resources == {"arn:aws:s3:::bkt-a", "arn:aws:s3:::bkt-a/data/*", "arn:aws:s3:::bkt-b", "arn:aws:s3:::bkt-b/*",
                         "arn:aws:kms:us-east-1:111122223333:key/abcd-1234"}
    assert data_access.policy(locs[0], "cn-north-1")["Statement"][0]["Resource"].startswith("arn:aws-cn:s3:::")


# --- EKS: Pod Identity -------------------------------------------------------------


def test_the_eks_plan_registers_the_agent_the_role_its_policy_and_the_association(eks_data):
    agent = eks_data.one("aws:eks/addon:Addon", "eks-pod-identity-agent")
    assert agent.inputs["addonName"] == "eks-pod-identity-agent" and agent.inputs["clusterName"] == "eks-data-eks"
    role = eks_data.one("aws:iam/role:Role", "finetune-data")
    trust = json.loads(role.inputs["assumeRolePolicy"])
    assert trust["Statement"] == [{"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
                                   "Action": ["sts:AssumeRole", "sts:TagSession"]}]
    policy = eks_data.one(POLICY, "finetune-data")
    assert policy.inputs["role"] == "<finetune-data.id>"
    association = eks_data.one(ASSOCIATION, "finetune-data")
    assert {k: association.inputs[k] for k in ("clusterName", "namespace", "serviceAccount", "roleArn")} == {
        "clusterName": "eks-data-eks", "namespace": "efa-jobs", "serviceAccount": "finetune", "roleArn": "<finetune-data.arn>"}
    # It names the cluster by its (known) name, so it waits for the cluster explicitly.
    assert eks_data.one("eks:index:Cluster").urn in association.depends_on
    with moto.mock_aws():  # moto checks both documents as IAM does
        iam = boto3.client("iam", region_name=REGION)
        iam.create_role(RoleName="job", AssumeRolePolicyDocument=role.inputs["assumeRolePolicy"])
        iam.put_role_policy(RoleName="job", PolicyName="data", PolicyDocument=policy.inputs["policy"])


def test_the_pods_run_on_the_jobs_service_account_with_the_fsx_volume_and_validate(eks_data):
    cfg = config.load_file(ROOT / "stacks" / "Pulumi.eks-data.yaml")
    docs = launch.render_manifests(cfg, cfg.jobs[0])
    account, job = docs
    assert account == {"apiVersion": "v1", "kind": "ServiceAccount", "automountServiceAccountToken": False,
                       "metadata": {"name": "finetune", "namespace": "efa-jobs",
                                    "labels": {"app.kubernetes.io/name": "finetune", "efa-infra/job": "finetune"}}}
    for template in pod_templates(job):
        spec = template["spec"]
        assert spec["serviceAccountName"] == "finetune" and spec["automountServiceAccountToken"] is False
        container = spec["containers"][0]
        assert {"name": "fsx", "mountPath": "/fsx"} in container["volumeMounts"]
        assert {"name": "fsx", "persistentVolumeClaim": {"claimName": "p5-fsx"}} in spec["volumes"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert (env["DATA_PATH"], env["CHECKPOINT_PATH"]) == ("/fsx/datasets/corpus", "/fsx/checkpoints/finetune")
        # Every other hardening is kept.
        assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]}}
    for d in docs:
        check_manifest(d, schema_versions(cfg))
    # The claim the pods name is the one the stack makes, in the job's namespace.
    claim = eks_data.one("kubernetes:core/v1:PersistentVolumeClaim", "p5-fsx")
    assert claim.inputs["metadata"] == {"name": "p5-fsx", "namespace": "efa-jobs"}


def test_only_the_node_pods_of_an_mpijob_take_the_identity():
    doc = copy.deepcopy(config.read_stack_file(ROOT / "stacks" / "Pulumi.prod.yaml"))
    (i,) = [i for i, j in enumerate(doc["efa-infra:jobs"]) if j.get("kind") == "mpijob"]
    doc["efa-infra:jobs"][i]["s3"] = [{"uri": "s3://results-bucket/nccl/", "access": "read-write"}]
    cfg = config.load(config.document_from_settings(doc))
    account, mpijob = launch.render_manifests(cfg, cfg.jobs[i])
    specs = mpijob["spec"]["mpiReplicaSpecs"]
    assert "serviceAccountName" not in specs["Launcher"]["template"]["spec"]  # mpirun reads no data
    assert specs["Worker"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"] == "nccl-efa"
    assert not launch.render_manifests(cfg, cfg.jobs[0])[0]["kind"] == "ServiceAccount"  # no s3: no identity


def test_a_joined_cluster_gets_the_association_but_no_agent():
    d = existing_doc(eks={"enabled": True, "existing": {"clusterName": "ml-shared"}})
    d["jobs"] = [{"name": "train", "fleet": "gpu", "launcher": "torchrun", "command": ["t.py"], "image": "repo/train:1",
                  "s3": [{"uri": "s3://bkt-a/data/"}]}]
    answers = existing_lookups(availableIpAddressCount=4000)
    answers[mocks.GET_ADDON] = lambda args: {"addonName": args["addonName"], "clusterName": args["clusterName"]}
    run = mocks.run(settings_of(d), "byo", answers)
    assert run.error is None, run.error
    assert run.one(ASSOCIATION).inputs["clusterName"] == "ml-shared"
    assert run.one("aws:eks/accessEntry:AccessEntry").urn in run.one(ASSOCIATION).depends_on
    assert not run.of_type("aws:eks/addon:Addon")
    # A file system there gets its volume and claim; the cluster runs its own CSI driver.
    d["fleets"][0]["fsx"] = {"storageGiB": 1200, "namespace": "efa-jobs"}
    answers[mocks.GET_CALLER_IDENTITY] = mocks.stand_in_lookups(settings_of(d))[mocks.GET_CALLER_IDENTITY]  # its key's policy
    with_fsx = mocks.run(settings_of(d), "byo", answers)
    assert with_fsx.error is None, with_fsx.error
    assert with_fsx.one("kubernetes:core/v1:PersistentVolumeClaim", "gpu-fsx")
    assert "aws-fsx-csi-driver" not in {r.inputs["chart"] for r in with_fsx.of_type("kubernetes:helm.sh/v3:Release")}
    del d["fleets"][0]["fsx"]

    # As the provider fails the lookup: ResourceNotFoundException from DescribeAddon.
    answers[mocks.GET_ADDON] = lambda args: ({}, [("addonName", "ResourceNotFoundException: No addon: eks-pod-identity-agent "
                                                               "found in cluster: ml-shared")])
    refused = mocks.run(settings_of(d), "byo", answers)
    assert "efa-infra:jobs[0].s3" in refused.error and "no eks-pod-identity-agent add-on" in refused.error
    assert "aws eks create-addon --addon-name eks-pod-identity-agent" in refused.error
    assert not refused.resources  # nothing created


# --- plain EC2 ---------------------------------------------------------------------


def test_the_ec2_node_role_gets_the_union_of_its_jobs_policies():
    jobs = [{"name": "a", "fleet": "gpu", "launcher": "torchrun", "command": ["t.py"],
             "s3": [{"uri": "s3://bkt-a/data/"}, {"uri": "s3://bkt-out/a/", "access": "read-write"}]},
            {"name": "b", "fleet": "gpu", "launcher": "torchrun", "command": ["t.py"], "s3": [{"uri": "s3://bkt-a/data/"}]},
            {"name": "c", "fleet": "gpu", "launcher": "torchrun", "command": ["t.py"]}]
    d = base_doc(jobs=jobs)
    run = mocks.run(settings_of(d), "t")
    assert run.error is None, run.error
    (node_policy,) = [r for r in run.of_type(POLICY) if r.name == "gpu-data"]
    assert node_policy.inputs["role"] == "<gpu-node.id>"
    document = json.loads(node_policy.inputs["policy"])
    cfg = config.load(d)
    expected = data_access.policy(cfg.jobs[0].s3 + cfg.jobs[1].s3, cfg.region)
    assert document == expected and len(document["Statement"]) == 4  # b's location is a's: no repeat
    assert s3_verdicts(node_policy.inputs["policy"], [("get", "bkt-a", "data/x"), ("put", "bkt-out", "a/ckpt"),
                                                      ("put", "bkt-out", "b/ckpt")]) == ["ok", "ok", "AccessDenied"]
    assert not run.of_type(ASSOCIATION)
    # A fleet whose jobs name no S3 gets no data policy.
    plain = mocks.run(settings_of(base_doc(jobs=[jobs[2]])), "t")
    assert not [r for r in plain.of_type(POLICY) if r.name == "gpu-data"]


def test_ec2_jobs_are_given_their_paths():
    stack_run("ec2-fsx")  # the stack runs clean
    cfg = config.load_file(ROOT / "stacks" / "Pulumi.ec2-fsx.yaml")
    script = launch.render_node_script(cfg, cfg.jobs[0], stack="ec2-fsx")
    assert "export DATA_PATH=/fsx/datasets/corpus" in script
    assert "export CHECKPOINT_PATH=s3://example-training-results/pretrain/checkpoints" in script


def test_plan_shows_each_jobs_access_and_paths():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "components", "plan", "--stack", "eks-data", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (job,) = json.loads(out.stdout)["jobs"]
    assert job["identity"] == "EKS Pod Identity, service account efa-jobs/finetune" and job["fsxMount"] == "/fsx"
    assert job["s3"] == [{"uri": "s3://example-training-data/tokenizers/", "access": "read-only"},
                         {"uri": "s3://example-training-results/finetune/", "access": "read-write"}]
    assert job["env"]["CHECKPOINT_PATH"] == "/fsx/checkpoints/finetune"


# --- config refusals -----------------------------------------------------------------


def eks_doc(job: dict, fleet: dict | None = None) -> dict:
    d = base_doc(eks={"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], "operators": ["training-operator"],
                      **DEPLOYER})
    d["fleets"][0].update(fleet or {})
    d["jobs"] = [{"name": "train", "fleet": "gpu", "launcher": "torchrun", "command": ["t.py"], "image": "repo/train:1", **job}]
    return d


@pytest.mark.parametrize("job,fleet,key,words", [
    ({"s3": [{"uri": "s3://bkt-a/data/"}], "checkpointPath": "s3://bkt-a/data/ckpt"}, None, "jobs[0].checkpointPath",
     "read-only locations only"),
    ({"s3": [{"uri": "s3://bkt-a/data/"}], "dataPath": "s3://bkt-a/other"}, None, "jobs[0].dataPath", "under none of the job's s3"),
    ({"dataPath": "/data/corpus"}, {"fsx": {"storageGiB": 1200}}, "jobs[0].dataPath", "not under the job's FSx mount (/fsx)"),
    ({"checkpointPath": "/ckpt"}, None, "jobs[0].checkpointPath", "has no fsx"),
    ({"dataPath": "/fsx/x", "env": {"DATA_PATH": "/y"}}, {"fsx": {"storageGiB": 1200}}, "jobs[0].env.DATA_PATH", "remove one"),
    ({"fsxMountPath": "/data"}, None, "jobs[0].fsxMountPath", "has no fsx"),
    ({"namespace": "default"}, {"fsx": {"storageGiB": 1200}}, "jobs[0].namespace", "its claim in 'efa-jobs'"),
    ({"s3": [{"uri": "s3://b/x"}]}, None, "jobs[0].s3[0].uri", "3 to 63"),
    ({"s3": [{"uri": "s3://bkt-a/data/*"}]}, None, "jobs[0].s3[0].uri", "no '*' or '?'"),
])
def test_bad_data_config_is_refused_naming_the_key(job, fleet, key, words):
    with pytest.raises(config.ConfigError) as err:
        config.load(eks_doc(job, fleet))
    assert f"efa-infra:{key}" in str(err.value) and words in str(err.value)


def test_s3_on_a_cluster_the_stack_does_not_manage_is_refused():
    d = base_doc(clusters=[{"name": "hp", "kind": "hyperpod", "instanceType": "ml.p5.48xlarge", "nodes": 2}],
                 jobs=[{"name": "train", "fleet": "hp", "launcher": "torchrun", "command": ["t.py"], "image": "repo/train:1",
                        "s3": [{"uri": "s3://bkt-a/data/"}]}])
    with pytest.raises(config.ConfigError, match=r"efa-infra:jobs\[0\]\.s3: 'hp' is a cluster this stack does not manage"):
        config.load(d)


def test_paths_in_range_are_accepted():
    cfg = config.load(eks_doc({"s3": [{"uri": "s3://bkt-a/data/", "access": "read-write"}], "dataPath": "/scratch/in",
                               "checkpointPath": "s3://bkt-a/data/ckpt", "fsxMountPath": "/scratch"},
                              {"fsx": {"storageGiB": 1200}}))
    plan = launch.job_plan(cfg, cfg.jobs[0])
    assert plan.fsx_mount_path == "/scratch" and plan.env["CHECKPOINT_PATH"] == "s3://bkt-a/data/ckpt"


def test_a_trainjobs_pods_take_the_identity_through_its_runtime_patch():
    """Trainer v2.3's pod patch carries serviceAccountName (kubeflow-trainer-api 2.3.0, PodSpecPatch), so the pods the
    trainer makes from a TrainJob with S3 access run on the job's service account."""
    from components.offline import trainer_model
    from components.planning.launch import trainjob

    doc = copy.deepcopy(config.read_stack_file(ROOT / "stacks" / "Pulumi.prod.yaml"))
    (i,) = [i for i, j in enumerate(doc["efa-infra:jobs"]) if j.get("kind") == "trainjob"]
    doc["efa-infra:jobs"][i]["s3"] = [{"uri": "s3://training-data/tokens/"}]
    cfg = config.load(config.document_from_settings(doc))
    account, train = launch.render_manifests(cfg, cfg.jobs[i])
    pod = trainer_model.node_pod(trainjob.runtime(), train)
    assert account["kind"] == "ServiceAccount" and pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
