"""Jobs' access to their S3 data, as the policy data_access derives: on EKS a role of the job's own, which EKS Pod
Identity hands to the pods on the job's service account; on plain EC2 a policy on the fleet's node role."""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

# EKS Pod Identity: the agent assumes the role for the pod as the service principal pods.eks.amazonaws.com, with
# session tags (EKS user guide, pod-id-role: trust policy with sts:AssumeRole and sts:TagSession).
POD_IDENTITY_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
                   "Action": ["sts:AssumeRole", "sts:TagSession"]}],
}


def pod_identity(name: str, cluster_name: pulumi.Input[str], namespace: str, service_account: str, policy: dict,
                 tags: dict[str, str], opts: pulumi.ResourceOptions) -> aws.eks.PodIdentityAssociation:
    """The job's role, its data policy, and the association that gives it to the pods on its service account;
    `opts` carry what the association waits for: the cluster it names."""
    own = pulumi.ResourceOptions(parent=opts.parent)
    role = aws.iam.Role(f"{name}-data", aws.iam.RoleArgs(assume_role_policy=json.dumps(POD_IDENTITY_TRUST), tags=tags), opts=own)
    aws.iam.RolePolicy(f"{name}-data", aws.iam.RolePolicyArgs(role=role.id, policy=json.dumps(policy)), opts=own)
    return aws.eks.PodIdentityAssociation(
        f"{name}-data",
        aws.eks.PodIdentityAssociationArgs(cluster_name=cluster_name, namespace=namespace, service_account=service_account,
                                           role_arn=role.arn, tags=tags),
        opts=opts,
    )


def node_data_policy(name: str, role: aws.iam.Role, policy: dict, opts: pulumi.ResourceOptions) -> aws.iam.RolePolicy:
    """The fleet's jobs' data access on its node role, a policy of its own beside the role's others."""
    return aws.iam.RolePolicy(f"{name}-data", aws.iam.RolePolicyArgs(role=role.id, policy=json.dumps(policy)), opts=opts)
