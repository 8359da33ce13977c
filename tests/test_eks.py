"""EKS under Pulumi's mocks: the inputs that decide whether EFA works on Kubernetes."""

from __future__ import annotations

import base64

import pytest

from components.planning import config, efa
from components.offline import mocks
from conftest import DEPLOYER, ROOT, base_doc, settings_of

NODEGROUP = "aws:eks/nodeGroup:NodeGroup"
RELEASE = "kubernetes:helm.sh/v3:Release"
LT = "aws:ec2/launchTemplate:LaunchTemplate"
EKS = {"enabled": True, "availabilityZones": ["us-east-1a", "us-east-1b"], **DEPLOYER}


@pytest.fixture(scope="module")
def prod() -> mocks.Run:
    run = mocks.run(config.read_stack_file(ROOT / "stacks" / "Pulumi.prod.yaml"), "prod")
    assert run.error is None, run.error
    return run


def test_efa_node_group_launches_from_the_fleet_template(prod):
    ng = prod.one(NODEGROUP, "p5-nodes").inputs
    assert ng["launchTemplate"] == {"id": "<p5-lt.id>", "version": "1"}
    assert ng["subnetIds"] == ["<efa-private-us-east-1a.id>"]
    assert ng["amiType"] == "AL2023_x86_64_NVIDIA"
    # No node.kubernetes.io/instance-type: EKS refuses the prefix, and the kubelet sets it anyway.
    assert ng["labels"] == {"efa-infra/fleet": "p5", "vpc.amazonaws.com/efa.present": "true", "efa-infra/accelerator": "gpu"}
    assert "capacityType" not in ng  # on-demand: EKS's default
    assert ng["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
    assert ng["scalingConfig"] == {"minSize": 2, "desiredSize": 4, "maxSize": 64}
    assert ng["clusterName"] == "prod-eks"


def test_eks_launch_template_leaves_out_what_eks_sets(prod):
    lt = prod.one(LT, "p5-lt").inputs
    assert "iamInstanceProfile" not in lt and "imageId" not in lt
    interfaces = lt["networkInterfaces"]
    assert all("subnetId" not in i for i in interfaces)
    # The EFA group and EKS's cluster group, which the control plane and the system nodes carry too.
    assert all(i["securityGroups"] == ["<efa-efa.id>", "<eks-cluster.vpcConfig.clusterSecurityGroupId>"] for i in interfaces)
    assert len(interfaces) == len(efa.network_interfaces("p5.48xlarge"))
    # Pods never outnumber the addresses the CNI has: 1 interface x 49 secondary IPs + 2.
    user_data = base64.b64decode(lt["userData"]).decode()
    assert "Content-Type: application/node.eks.aws" in user_data and "maxPods: 51" in user_data


def test_device_plugins_tolerate_the_gpu_taint_and_select_by_our_label(prod):
    efa_plugin = prod.one(RELEASE, "eks-efa-device-plugin").inputs
    assert efa_plugin["chart"] == "aws-efa-k8s-device-plugin" and efa_plugin["version"]
    values = efa_plugin["values"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in values["tolerations"]
    assert values["nodeSelector"] == {"vpc.amazonaws.com/efa.present": "true"}
    assert values["supportedInstanceLabels"] == {"keys": ["vpc.amazonaws.com/efa.present"], "values": ["true"]}
    nvidia = prod.one(RELEASE, "eks-nvidia-device-plugin").inputs["values"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in nvidia["tolerations"]
    (term,) = nvidia["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term == {"matchExpressions": [{"key": "efa-infra/accelerator", "operator": "In", "values": ["gpu"]}]}


def test_cluster_endpoint_auth_and_encryption(prod):
    cluster = prod.one("eks:index:Cluster").inputs
    assert cluster["authenticationMode"] == "API"
    # Private access on; the public endpoint only for the deployer's runner (eks.deployer, tests/test_deployer.py).
    assert cluster["endpointPrivateAccess"] is True and cluster["endpointPublicAccess"] is True
    assert cluster["publicAccessCidrs"] == ["198.51.100.10/32"]
    assert cluster["encryptionConfigKeyArn"] == "<eks-secrets.arn>"
    assert cluster["skipDefaultNodeGroup"] is True and cluster["skipDefaultSecurityGroups"] is True
    assert prod.one("aws:kms/key:Key").inputs["enableKeyRotation"] is True
    cni = prod.one("aws:eks/addon:Addon", "eks-vpc-cni").inputs
    assert (cni["addonName"], cni["addonVersion"]) == ("vpc-cni", "v1.19.2-eksbuild.1")
    system = prod.one(NODEGROUP, "eks-system").inputs
    assert system["instanceTypes"] == ["m6i.large"] and "launchTemplate" not in system


def test_public_endpoint_only_for_listed_cidrs():
    doc = base_doc(eks={**EKS, "publicAccessCidrs": ["203.0.113.0/24"]})
    run = mocks.run(settings_of(doc), "t")
    cluster = run.one("eks:index:Cluster").inputs
    assert cluster["endpointPublicAccess"] is True and cluster["publicAccessCidrs"] == ["203.0.113.0/24"]


def test_trainium_fleet_gets_the_neuron_ami_and_taint():
    doc = base_doc(eks=EKS,
                   fleets=[{"name": "trn", "instanceType": "trn2.48xlarge", "availabilityZone": "us-east-1a", "nodes": {"desired": 2}}])
    run = mocks.run(settings_of(doc), "t")
    assert run.error is None, run.error
    ng = run.one(NODEGROUP, "trn-nodes").inputs
    assert ng["amiType"] == "AL2023_x86_64_NEURON"
    assert ng["taints"] == [{"key": "aws.amazon.com/neuron", "value": "true", "effect": "NO_SCHEDULE"}]
    neuron_toleration = [{"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}]
    assert run.one(RELEASE, "eks-efa-device-plugin").inputs["values"]["tolerations"] == neuron_toleration
    neuron = run.one(RELEASE, "eks-neuron-device-plugin").inputs
    assert neuron["chart"] == "oci://public.ecr.aws/neuron/neuron-helm-chart" and "repositoryOpts" not in neuron
    plugin = neuron["values"]["devicePlugin"]
    assert plugin["tolerations"] == neuron_toleration
    (term,) = plugin["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term == {"matchExpressions": [{"key": "efa-infra/accelerator", "operator": "In", "values": ["neuron"]}]}
    assert not [r for r in run.of_type(RELEASE) if r.name == "eks-nvidia-device-plugin"]


def test_plain_ec2_stacks_create_no_cluster():
    run = mocks.run(settings_of(base_doc()), "t")
    assert run.of_type("eks:index:Cluster") == [] and run.of_type(NODEGROUP) == []
