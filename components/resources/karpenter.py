"""Karpenter on a cluster the stack creates: the controller (official chart, pinned), its IAM role through EKS
Pod Identity, its interruption queue and the events that feed it; and per Karpenter fleet an EC2NodeClass and
a NodePool from `planning/karpenter.py`. Nodes use the cluster's node role (whose access entry EKS made for the
system node group) and the same security groups as the fleets' node groups.
"""

from __future__ import annotations

import json
import re

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from ..planning import bootstrap
from ..planning import karpenter as plan_k
from ..planning.plan import FleetPlan, StackPlan

NAMESPACE, SERVICE_ACCOUNT = "kube-system", "karpenter"  # the chart's service account, in the namespace its docs install to


class Karpenter(pulumi.ComponentResource):
    release: k8s.helm.v3.Release

    def __init__(self, name: str, plan: StackPlan, cluster_name: pulumi.Input[str], node_role: aws.iam.Role,
                 k8s_provider: k8s.Provider, after: list[pulumi.Resource], tags: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("efa-infra:index:Karpenter", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        aws_side = plan_k.aws_side()
        queue = aws.sqs.Queue(
            f"{name}-interruption",
            aws.sqs.QueueArgs(message_retention_seconds=aws_side["queue"]["messageRetentionSeconds"],
                              sqs_managed_sse_enabled=aws_side["queue"]["sqsManagedSse"], tags=tags),
            opts=child,
        )
        aws.sqs.QueuePolicy(
            f"{name}-interruption",
            aws.sqs.QueuePolicyArgs(queue_url=queue.url, policy=queue.arn.apply(lambda arn: json.dumps({
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]},
                     "Action": "sqs:SendMessage", "Resource": arn},
                    {"Sid": "DenyHTTP", "Effect": "Deny", "Principal": "*", "Action": "sqs:*", "Resource": arn,
                     "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
                ],
            }))),
            opts=child,
        )
        for source, detail in aws_side["interruptionEvents"]:
            # Named by the event, so stable if the list grows; cut so that the auto-name fits EventBridge's 64 characters.
            event = re.sub(r"[^a-z0-9]+", "-", detail.lower()).strip("-")[:40]
            rule = aws.cloudwatch.EventRule(
                f"{name}-{event}",
                aws.cloudwatch.EventRuleArgs(description=f"Karpenter: {detail}",
                                             event_pattern=json.dumps({"source": [source], "detail-type": [detail]}), tags=tags),
                opts=child,
            )
            aws.cloudwatch.EventTarget(f"{name}-{event}", aws.cloudwatch.EventTargetArgs(rule=rule.name, arn=queue.arn), opts=child)
        role = aws.iam.Role(
            f"{name}-controller",
            aws.iam.RoleArgs(
                assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
                    "Action": ["sts:AssumeRole", "sts:TagSession"]}]}),
                tags=tags,
            ),
            opts=child,
        )
        account = aws.get_caller_identity_output().account_id
        documents = pulumi.Output.all(account, cluster_name, queue.arn, node_role.arn).apply(
            lambda v: plan_k.controller_policies(plan.config.region, v[0], v[1], v[2], v[3]))
        attached = []
        for policy_name in aws_side["policies"]:
            policy = aws.iam.Policy(
                f"{name}-{policy_name}",
                aws.iam.PolicyArgs(description=f"Karpenter controller: {policy_name}",
                                   policy=documents.apply(lambda d, n=policy_name: d[n]), tags=tags),
                opts=child,
            )
            attached.append(aws.iam.RolePolicyAttachment(
                f"{name}-{policy_name}", aws.iam.RolePolicyAttachmentArgs(role=role.name, policy_arn=policy.arn), opts=child))
        agent = aws.eks.Addon(
            f"{name}-pod-identity-agent",
            aws.eks.AddonArgs(cluster_name=cluster_name, addon_name="eks-pod-identity-agent", tags=tags),
            opts=pulumi.ResourceOptions(parent=self, depends_on=after),
        )
        identity = aws.eks.PodIdentityAssociation(
            f"{name}-controller",
            aws.eks.PodIdentityAssociationArgs(cluster_name=cluster_name, namespace=NAMESPACE, service_account=SERVICE_ACCOUNT,
                                               role_arn=role.arn, tags=tags),
            opts=pulumi.ResourceOptions(parent=self, depends_on=after),
        )
        facts = plan_k.facts()
        self.release = k8s.helm.v3.Release(
            f"{name}-controller",
            k8s.helm.v3.ReleaseArgs(chart=facts["chart"], version=facts["version"], namespace=NAMESPACE,
                                    values=pulumi.Output.all(cluster_name, queue.name).apply(
                                        lambda v: plan_k.helm_values(v[0], v[1]))),
            opts=pulumi.ResourceOptions(parent=self, provider=k8s_provider, depends_on=[agent, identity, *attached, *after]),
        )
        self.register_outputs({"interruptionQueue": queue.name, "controllerRole": role.arn})

    def fleet(self, fp: FleetPlan, stack: str, node_role: aws.iam.Role, subnet_id: pulumi.Input[str],
              security_group_ids: list[pulumi.Input[str]], placement_group: pulumi.Input[str] | None,
              k8s_provider: k8s.Provider) -> None:
        """The fleet's EC2NodeClass and NodePool, made after the chart has put Karpenter's CRDs in place."""
        on_k8s = pulumi.ResourceOptions(parent=self, provider=k8s_provider, depends_on=[self.release])
        node_class = pulumi.Output.all(node_role.name, subnet_id, placement_group, *security_group_ids).apply(
            lambda v: plan_k.ec2_node_class(fp, stack, plan_k.NodeClassInputs(
                role=v[0], subnet_id=v[1], placement_group=v[2], security_group_ids=list(v[3:]),
                user_data=bootstrap.user_data(fp.boot))))
        made = k8s.apiextensions.CustomResource(
            f"{fp.name}-nodeclass",
            api_version=plan_k.NODE_CLASS_API, kind="EC2NodeClass",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=plan_k.node_class_name(fp)),
            spec=node_class.apply(lambda d: d["spec"]),
            opts=on_k8s,
        )
        pool = plan_k.node_pool(fp)
        k8s.apiextensions.CustomResource(
            f"{fp.name}-nodepool",
            api_version=plan_k.NODE_POOL_API, kind="NodePool",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=pool["metadata"]["name"]),
            spec=pool["spec"],
            opts=pulumi.ResourceOptions.merge(on_k8s, pulumi.ResourceOptions(depends_on=[self.release, made])),
        )

    def overlays(self, fleets: list[FleetPlan], k8s_provider: k8s.Provider) -> None:
        on_k8s = pulumi.ResourceOptions(parent=self, provider=k8s_provider, depends_on=[self.release])
        for overlay in plan_k.node_overlays(fleets):
            k8s.apiextensions.CustomResource(
                overlay["metadata"]["name"], api_version=plan_k.NODE_OVERLAY_API, kind="NodeOverlay",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=overlay["metadata"]["name"]), spec=overlay["spec"], opts=on_k8s)
