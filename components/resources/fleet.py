"""EfaFleet: the placement group, launch template and (on plain EC2) the Auto
Scaling group of one fleet.

The launch template carries the interfaces exactly as `efa.interfaces` lays
them out for the fleet's layout; this module adds only what every interface
shares (security groups, subnet, no public IP). Only the Auto Scaling group
reads the node counts, so scaling a fleet never touches anything else.
"""

from __future__ import annotations

import base64
import dataclasses
import json

import pulumi
import pulumi_aws as aws

from ..planning import bootstrap, fsx, launch
from ..planning.capacity_window import Schedule
from ..planning.plan import FLEET_TAG, STACK_TAG, FleetPlan, default_ami
from .data_access import node_data_policy
from .fsx import FsxLustre


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def node_role(name: str, tags: dict[str, str], opts: pulumi.ResourceOptions) -> aws.iam.Role:
    """An IAM role that EC2 instances (plain or EKS nodes) assume; policies are attached by the caller."""
    return aws.iam.Role(
        name,
        aws.iam.RoleArgs(
            assume_role_policy=json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
            }),
            tags=tags,
        ),
        opts=opts,
    )


def health_policy(fleet: str, stack: str) -> dict:
    """May mark instances unhealthy, and (the boot guard) stop replacements, only in the Auto Scaling group tagged as
    this stack's fleet; may count failed boots in the guard's metric namespace only. Finding its own group and reading
    the count take no resource-level permissions (Service Authorization Reference: DescribeAutoScalingInstances,
    GetMetricStatistics)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["autoscaling:SetInstanceHealth", "autoscaling:SuspendProcesses"],
             "Resource": "arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/*",
             "Condition": {"StringEquals": {f"autoscaling:ResourceTag/{FLEET_TAG}": fleet,
                                            f"autoscaling:ResourceTag/{STACK_TAG}": stack}}},
            {"Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*",
             "Condition": {"StringEquals": {"cloudwatch:namespace": bootstrap.GUARD_NAMESPACE}}},
            {"Effect": "Allow", "Action": ["autoscaling:DescribeAutoScalingInstances", "cloudwatch:GetMetricStatistics"],
             "Resource": "*"},
        ],
    }


def run_output_policy(log_group_arn: str) -> dict:
    """What SSM's agent on a node needs to put command output into the fleet's log group, and nothing more. The agent
    first tries CreateLogGroup and, refused, goes on when DescribeLogGroups finds the group; then it creates a stream
    per node and output, reads its token (DescribeLogStreams) and puts the events (aws/amazon-ssm-agent 3.3.1142.0,
    framework/processor/executer/iohandler/iohandler.go and agentlogstocloudwatch/cloudwatchlogspublisher/
    cloudwatchlogsservice.go). The stack creates the group, so the role may not."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
             "Resource": f"{log_group_arn}:*"},
            # DescribeLogGroups takes no resource (Service Authorization Reference, CloudWatch Logs).
            {"Effect": "Allow", "Action": "logs:DescribeLogGroups", "Resource": "*"},
        ],
    }


def window_sizes(plan: FleetPlan, window: Schedule | None) -> tuple[int, int]:
    """(min, desired) now: none of a Capacity Block's nodes before it starts, since none can launch."""
    if window is not None and not window.started:
        return 0, 0
    return plan.config.nodes.min, plan.config.nodes.desired


def block_schedules(name: str, plan: FleetPlan, window: Schedule, group_name: pulumi.Input[str],
                    opts: pulumi.ResourceOptions, scale_down: bool) -> None:
    """Scheduled actions of a Capacity Block fleet's group: to its size when the block starts (unless it
    has), and, where EKS does not add its own, to zero before it ends."""
    n = plan.config.nodes
    actions = []
    if window.scale_up_at is not None:
        actions.append(("block-start", window.scale_up_at, n.min, n.desired))
    if scale_down:
        actions.append(("block-end", window.scale_down_at, 0, 0))
    for action, at, low, desired in actions:
        aws.autoscaling.Schedule(
            f"{name}-{action}",
            aws.autoscaling.ScheduleArgs(
                autoscaling_group_name=group_name, scheduled_action_name=f"efa-infra-{action}", start_time=at,
                min_size=low, desired_capacity=desired, max_size=n.maximum,
            ),
            opts=opts,
        )


class EfaFleet(pulumi.ComponentResource):
    # self.launch_template (aws.ec2.LaunchTemplate, None for a Karpenter fleet): not a class annotation, for the
    # annotated attributes are the component package's outputs (resources/hosted.py), which give plain ids.
    placement_group_name: pulumi.Output[str] | None
    asg_name: pulumi.Output[str] | None
    run_log_group: pulumi.Output[str] | None  # plain EC2: where SSM puts the output of the commands run on the nodes

    def __init__(
        self,
        name: str,
        plan: FleetPlan,
        stack: str,
        subnet_id: pulumi.Input[str],
        security_group_ids: list[pulumi.Input[str]],
        tags: dict[str, str],
        region: str,
        cluster_join: pulumi.Input[dict] | None = None,
        window: Schedule | None = None,
        file_system: FsxLustre | None = None,
        data_policy: dict | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        """`cluster_join` (a pinned AMI on EKS): the nodeadm cluster section its nodes need to join.
        `window` (a Capacity Block): when the block's nodes may run. `file_system`: the fleet's FSx, which plain
        EC2 nodes mount at boot. `data_policy`: on plain EC2, its jobs' S3 access, for the node role."""
        super().__init__("efa-infra:index:EfaFleet", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        fleet_tags = {**tags, FLEET_TAG: plan.config.name, STACK_TAG: stack}
        self.placement_group_name = self._placement_group(name, plan, fleet_tags, child)
        # EKS node groups bring their own role.
        profile = self.run_log_group = None
        if not plan.on_eks:
            logs = aws.cloudwatch.LogGroup(
                f"{name}-run-output",
                aws.cloudwatch.LogGroupArgs(name=launch.run_log_group(stack, plan.config.name),
                                            retention_in_days=launch.RUN_LOG_RETENTION_DAYS, tags=fleet_tags),
                opts=child,
            )
            self.run_log_group = logs.name
            profile = self._instance_profile(name, plan, stack, region, fleet_tags, logs, data_policy, child)
        # Karpenter makes its nodes' launch templates itself, from the fleet's EC2NodeClass.
        self.launch_template = None if plan.config.provisioner == "karpenter" else self._launch_template(
            name, plan, stack, subnet_id, security_group_ids, self.placement_group_name, profile,
            self._boot(plan, cluster_join, None if plan.on_eks else file_system), fleet_tags, child)
        self.asg_name = None if plan.on_eks else self._scaling_group(name, plan, stack, subnet_id, fleet_tags, window, child)
        self.register_outputs({
            "launchTemplateId": self.launch_template.id if self.launch_template else None,
            "launchTemplateVersion": self.launch_template.latest_version if self.launch_template else None,
            "placementGroupName": self.placement_group_name,
            "asgName": self.asg_name,
            "runLogGroup": self.run_log_group,
        })

    @staticmethod
    def _placement_group(name: str, plan: FleetPlan, fleet_tags: dict[str, str],
                         child: pulumi.ResourceOptions) -> pulumi.Output[str] | None:
        """The fleet's cluster placement group, the existing one it names, or none."""
        f = plan.config
        if f.placement_mode == "cluster":
            group = aws.ec2.PlacementGroup(
                f"{name}-pg",
                aws.ec2.PlacementGroupArgs(strategy="cluster", tags=fleet_tags),
                opts=child,
            )
            return group.name
        if f.placement_mode == "existing":
            return pulumi.Output.from_input(f.placement.group_name)
        return None

    @staticmethod
    def _boot(plan: FleetPlan, cluster_join: pulumi.Input[dict] | None, file_system: FsxLustre | None) -> pulumi.Output[str]:
        """The user data: the boot script, with the file system to mount once it exists."""
        if file_system is None:
            return pulumi.Output.from_input(cluster_join).apply(lambda join: _b64(bootstrap.user_data(plan.boot, join)))
        fs = file_system.file_system
        return pulumi.Output.all(pulumi.Output.from_input(cluster_join), fs.dns_name, fs.mount_name).apply(
            lambda v: _b64(bootstrap.user_data(dataclasses.replace(plan.boot, fsx=fsx.Mount(v[1], v[2], file_system.mount_path)), v[0])))

    @staticmethod
    def _instance_profile(name: str, plan: FleetPlan, stack: str, region: str, fleet_tags: dict[str, str],
                          logs: aws.cloudwatch.LogGroup, data_policy: dict | None,
                          child: pulumi.ResourceOptions) -> aws.iam.InstanceProfile:
        """Plain EC2 nodes' role: SSM access, writing run output into the fleet's log group only, EC2 read access for
        the launch script to find peers and order them by the network (DescribeInstanceTopology, in the fleet's
        region: EC2's Describe actions take no resource-level permissions), for mpirun (nccl-tests) the right to
        push a one-time SSH key to its fleet's nodes only, with the boot check the right to mark itself unhealthy,
        and its jobs' S3 access (a policy of its own)."""
        f = plan.config
        role = node_role(f"{name}-node", fleet_tags, child)
        aws.iam.RolePolicyAttachment(
            f"{name}-ssm",
            aws.iam.RolePolicyAttachmentArgs(role=role.name, policy_arn="arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-run-output",
            aws.iam.RolePolicyArgs(role=role.id, policy=logs.arn.apply(lambda arn: json.dumps(run_output_policy(arn)))),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-peers",
            aws.iam.RolePolicyArgs(
                role=role.id,
                policy=json.dumps({
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"},
                        {"Effect": "Allow", "Action": "ec2:DescribeInstanceTopology", "Resource": "*",
                         "Condition": {"StringEquals": {"aws:RequestedRegion": region}}},
                        {"Effect": "Allow", "Action": "ec2-instance-connect:SendSSHPublicKey",
                         "Resource": "arn:aws:ec2:*:*:instance/*",
                         "Condition": {"StringEquals": {f"aws:ResourceTag/{FLEET_TAG}": f.name,
                                                        f"aws:ResourceTag/{STACK_TAG}": stack}}},
                    ],
                }),
            ),
            opts=child,
        )
        if f.boot_check:
            # A node that fails its boot check marks itself unhealthy: in its own fleet's group only.
            aws.iam.RolePolicy(
                f"{name}-health",
                aws.iam.RolePolicyArgs(role=role.id, policy=json.dumps(health_policy(f.name, stack))),
                opts=child,
            )
        if data_policy:
            node_data_policy(name, role, data_policy, child)
        return aws.iam.InstanceProfile(f"{name}-node", aws.iam.InstanceProfileArgs(role=role.name, tags=fleet_tags), opts=child)

    @staticmethod
    def _launch_template(name: str, plan: FleetPlan, stack: str, subnet_id: pulumi.Input[str],
                         security_group_ids: list[pulumi.Input[str]], placement_group_name: pulumi.Output[str] | None,
                         profile: aws.iam.InstanceProfile | None, user_data: pulumi.Output[str],
                         fleet_tags: dict[str, str], child: pulumi.ResourceOptions) -> aws.ec2.LaunchTemplate:
        """Every EFA interface as `efa.interfaces` lays them out, IMDSv2 only, an encrypted root volume, the
        placement group and capacity the fleet names, and the boot script."""
        f = plan.config
        placement = None
        if placement_group_name is not None:
            placement = aws.ec2.LaunchTemplatePlacementArgs(group_name=placement_group_name)
        capacity_spec = market = None
        if f.capacity.type != "on-demand":
            capacity_spec = aws.ec2.LaunchTemplateCapacityReservationSpecificationArgs(
                capacity_reservation_target=aws.ec2.LaunchTemplateCapacityReservationSpecificationCapacityReservationTargetArgs(
                    capacity_reservation_id=f.capacity.reservation_id,
                    capacity_reservation_resource_group_arn=f.capacity.reservation_group_arn,
                ),
            )
        if f.capacity.type == "capacity-block":
            market = aws.ec2.LaunchTemplateInstanceMarketOptionsArgs(market_type="capacity-block")

        return aws.ec2.LaunchTemplate(
            f"{name}-lt",
            aws.ec2.LaunchTemplateArgs(
                description=f"efa-infra {stack}/{f.name}: {f.instance_type}, {plan.efa_devices} EFA devices ({f.efa_layout})",
                instance_type=f.instance_type,
                # On EKS the node group's AMI type picks the EKS-optimized accelerated AMI.
                image_id=None if plan.on_eks and not f.ami else (f.ami or default_ami(plan.itype)),
                network_interfaces=[
                    aws.ec2.LaunchTemplateNetworkInterfaceArgs(
                        network_card_index=i.network_card_index,
                        device_index=i.device_index,
                        interface_type=i.interface_type,
                        security_groups=security_group_ids,
                        # EKS node groups pick the subnet themselves and refuse one here.
                        subnet_id=None if plan.on_eks else subnet_id,
                        associate_public_ip_address="false",
                        delete_on_termination="true",
                    )
                    for i in plan.interfaces
                ],
                metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                    http_endpoint="enabled",
                    http_tokens="required",
                    # 1: containers, one hop further away, cannot reach the node role's credentials.
                    http_put_response_hop_limit=f.metadata_hop_limit,
                ),
                block_device_mappings=[
                    aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                        device_name="/dev/xvda",
                        ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                            volume_size=f.root_volume_gib, volume_type="gp3", encrypted="true", delete_on_termination="true",
                        ),
                    )
                ],
                iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=profile.arn) if profile else None,
                placement=placement,
                capacity_reservation_specification=capacity_spec,
                instance_market_options=market,
                user_data=user_data,
                tag_specifications=[
                    aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags={**fleet_tags, "Name": f"{stack}-{f.name}"})
                    for kind in ("instance", "volume")
                ],
                tags=fleet_tags,
            ),
            opts=child,
        )

    def _scaling_group(self, name: str, plan: FleetPlan, stack: str, subnet_id: pulumi.Input[str], fleet_tags: dict[str, str],
                       window: Schedule | None, child: pulumi.ResourceOptions) -> pulumi.Output[str]:
        """Plain EC2's Auto Scaling group, the only resource that reads the node counts; on a Capacity Block
        (`window`), scheduled to its size when the block starts and to zero before it ends."""
        f = plan.config
        low, desired = window_sizes(plan, window)
        asg = aws.autoscaling.Group(
            f"{name}-asg",
            aws.autoscaling.GroupArgs(
                min_size=low,
                desired_capacity=desired,
                max_size=f.nodes.maximum,
                vpc_zone_identifiers=[subnet_id],
                launch_template=aws.autoscaling.GroupLaunchTemplateArgs(
                    id=self.launch_template.id, version=self.launch_template.latest_version.apply(str),
                ),
                # The placement group and subnet come with the launch template.
                tags=[
                    aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=True)
                    for k, v in {**fleet_tags, "Name": f"{stack}-{f.name}"}.items()
                ],
            ),
            opts=child,
        )
        if window is not None:
            block_schedules(name, plan, window, asg.name, child, scale_down=True)
        if f.boot_check:
            self._boot_guard_alarm(name, plan, stack, asg.name, fleet_tags, child)
        return asg.name

    @staticmethod
    def _boot_guard_alarm(name: str, plan: FleetPlan, stack: str, group_name: pulumi.Output[str], fleet_tags: dict[str, str],
                          child: pulumi.ResourceOptions) -> None:
        """The signal of the boot guard: in alarm when the group's failed boot checks reach the count at which its nodes
        stop its replacements, over the same window."""
        aws.cloudwatch.MetricAlarm(
            f"{name}-boot-check",
            aws.cloudwatch.MetricAlarmArgs(
                name=f"efa-infra-{stack}-{plan.config.name}-boot-check",
                alarm_description=(
                    f"efa-infra {stack}/{plan.config.name}: {bootstrap.GUARD_FAILURES} or more nodes failed their boot check "
                    f"(missing EFA devices or accelerators) within {bootstrap.GUARD_WINDOW_MINUTES} minutes, and the Auto "
                    f"Scaling group's {bootstrap.GUARD_PROCESS} process is suspended: no node is replaced until the cause is "
                    "fixed and the process resumed (README, What happens to a bad node)."),
                namespace=bootstrap.GUARD_NAMESPACE,
                metric_name=bootstrap.GUARD_METRIC,
                dimensions={bootstrap.GUARD_DIMENSION: group_name},
                statistic="Sum",
                period=bootstrap.GUARD_WINDOW_MINUTES * 60,
                evaluation_periods=1,
                threshold=bootstrap.GUARD_FAILURES,
                comparison_operator="GreaterThanOrEqualToThreshold",
                treat_missing_data="notBreaching",  # no failed boot: no data point, and nothing wrong
                tags=fleet_tags,
            ),
            opts=child,
        )
