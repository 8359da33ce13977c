"""EfaNetwork: the VPC an EFA cluster needs.

Subnets where the address plan puts them (per AZ a private and a public one,
and a private one in the secondary CIDR block if the stack has one), NAT for
egress, an S3 gateway endpoint, optional interface endpoints,
and the EFA security group: all traffic to and from itself, egress to the
world, nothing inbound from outside (EC2 User Guide, "Prepare an EFA-enabled
security group"). A VPC it creates also gets flow logs and an emptied default
security group.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from ..planning.plan import StackPlan


class EfaNetwork(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    private_subnet_ids: dict[str, pulumi.Output[str]]  # the primary private subnet of each AZ
    # self.subnet_ids: every private subnet by (kind, AZ), where fleets go. Not a class annotation: the annotated
    # attributes are the component package's outputs (resources/hosted.py), and a tuple-keyed map is no output.
    security_group_id: pulumi.Output[str]

    def __init__(self, name: str, plan: StackPlan, tags: dict[str, str], existing_vpc_id: str | None = None,
                 opts: pulumi.ResourceOptions | None = None):
        """With `existing_vpc_id` (network.existing, already read and checked) only the EFA security group is created."""
        super().__init__("efa-infra:index:EfaNetwork", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tagged = lambda label: {**tags, "Name": f"{name}-{label}"}  # noqa: E731
        if existing_vpc_id is not None:
            self.vpc_id = pulumi.Output.from_input(existing_vpc_id)
            self.subnet_ids = {(s.kind, s.az): pulumi.Output.from_input(s.existing_id) for s in plan.subnets}
        else:
            self.vpc_id, self.subnet_ids = self._create_vpc(name, plan, tagged, child)
        self.private_subnet_ids = {az: sid for (kind, az), sid in self.subnet_ids.items() if kind == "private"}
        self.security_group_id = self._efa_security_group(name, self.vpc_id, tagged, child)
        self.register_outputs({
            "vpcId": self.vpc_id,
            "privateSubnetIds": self.private_subnet_ids,
            "securityGroupId": self.security_group_id,
        })

    def fleet_subnets(self, plan: StackPlan) -> dict[str, pulumi.Output[str]]:
        """The subnet each fleet's nodes go in, by fleet name."""
        return {fp.name: self.subnet_ids[(s.kind, s.az)] for fp in plan.fleets for s in [plan.fleet_subnet(fp)]}

    @staticmethod
    def _create_vpc(name: str, plan: StackPlan, tagged, child: pulumi.ResourceOptions):
        """The VPC, its subnets and routes, NAT and endpoints; returns its id and its private subnets' ids."""
        net = plan.config.network
        vpc = EfaNetwork._vpc(name, net, tagged, child)
        igw, public_rt = EfaNetwork._internet_route(name, vpc, tagged, child)
        azs = sorted({s.az for s in plan.subnets})
        subnets = EfaNetwork._subnets(name, plan, vpc, azs, public_rt, tagged, child)
        nats = EfaNetwork._nat_gateways(name, net, azs, subnets, igw, tagged, child)
        private_rts = EfaNetwork._private_routes(name, vpc, azs, subnets, nats, tagged, child)
        EfaNetwork._endpoints(name, plan, vpc, azs, subnets, private_rts, tagged, child)
        return vpc.id, {key: subnet.id for key, subnet in subnets.items() if key[0] != "public"}

    @staticmethod
    def _vpc(name: str, net, tagged, child: pulumi.ResourceOptions) -> aws.ec2.Vpc:
        """The VPC, its default security group emptied, and its flow logs."""
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            aws.ec2.VpcArgs(cidr_block=net.vpc_cidr, enable_dns_support=True, enable_dns_hostnames=True, tags=tagged("vpc")),
            opts=child,
        )
        # Nothing here uses the default group: emptied, so that an interface created without a group gets no traffic.
        aws.ec2.DefaultSecurityGroup(f"{name}-default", aws.ec2.DefaultSecurityGroupArgs(vpc_id=vpc.id, tags=tagged("default")),
                                     opts=child)
        EfaNetwork._flow_logs(name, net.flow_logs, vpc, tagged, child)
        return vpc

    @staticmethod
    def _internet_route(name: str, vpc: aws.ec2.Vpc, tagged, child: pulumi.ResourceOptions):
        """The internet gateway and the public subnets' route table to it."""
        igw = aws.ec2.InternetGateway(f"{name}-igw", aws.ec2.InternetGatewayArgs(vpc_id=vpc.id, tags=tagged("igw")), opts=child)
        public_rt = aws.ec2.RouteTable(
            f"{name}-public",
            aws.ec2.RouteTableArgs(
                vpc_id=vpc.id,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
                tags=tagged("public"),
            ),
            opts=child,
        )
        return igw, public_rt

    @staticmethod
    def _subnets(name: str, plan: StackPlan, vpc: aws.ec2.Vpc, azs: list[str], public_rt: aws.ec2.RouteTable, tagged,
                 child: pulumi.ResourceOptions) -> dict[tuple[str, str], aws.ec2.Subnet]:
        """Every subnet of the address plan by (kind, AZ), in the secondary CIDR block for kind secondary;
        the public ones routed to the internet gateway."""
        net = plan.config.network
        vpc_ids = {"private": vpc.id, "public": vpc.id}
        if net.secondary_cidr:
            block = aws.ec2.VpcIpv4CidrBlockAssociation(
                f"{name}-secondary",
                aws.ec2.VpcIpv4CidrBlockAssociationArgs(vpc_id=vpc.id, cidr_block=net.secondary_cidr),
                opts=child,
            )
            vpc_ids["secondary"] = block.vpc_id  # its subnets wait for the block
        subnets: dict[tuple[str, str], aws.ec2.Subnet] = {}
        for s in plan.subnets:
            subnets[(s.kind, s.az)] = aws.ec2.Subnet(
                f"{name}-{s.kind}-{s.az}",
                aws.ec2.SubnetArgs(
                    vpc_id=vpc_ids[s.kind],
                    cidr_block=s.cidr,
                    availability_zone=s.az,
                    # Instances with several interfaces cannot get a public IPv4 address; the NAT gateways,
                    # the public subnets' only tenants by default, have Elastic IPs.
                    map_public_ip_on_launch=s.kind == "public" and net.public_ip_on_launch,
                    tags={**tagged(f"{s.kind}-{s.az}"), "efa-infra:subnet": s.kind},
                ),
                opts=child,
            )
        for az in azs:
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{az}",
                aws.ec2.RouteTableAssociationArgs(subnet_id=subnets[("public", az)].id, route_table_id=public_rt.id),
                opts=child,
            )
        return subnets

    @staticmethod
    def _nat_gateways(name: str, net, azs: list[str], subnets: dict, igw: aws.ec2.InternetGateway, tagged,
                      child: pulumi.ResourceOptions) -> dict[str, aws.ec2.NatGateway]:
        """One NAT gateway for the VPC or one per AZ, each with its Elastic IP in its AZ's public subnet."""
        nat_azs = azs if net.nat_gateways == "per-az" else [net.nat_availability_zone or azs[0]]
        nats = {}
        for az in nat_azs:
            eip = aws.ec2.Eip(f"{name}-nat-{az}", aws.ec2.EipArgs(domain="vpc", tags=tagged(f"nat-{az}")), opts=child)
            nats[az] = aws.ec2.NatGateway(
                f"{name}-nat-{az}",
                aws.ec2.NatGatewayArgs(allocation_id=eip.id, subnet_id=subnets[("public", az)].id, tags=tagged(f"nat-{az}")),
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[igw])),
            )
        return nats

    @staticmethod
    def _private_routes(name: str, vpc: aws.ec2.Vpc, azs: list[str], subnets: dict, nats: dict[str, aws.ec2.NatGateway],
                        tagged, child: pulumi.ResourceOptions) -> list[aws.ec2.RouteTable]:
        """Per AZ a route table to its NAT gateway (else the one gateway), for its private and secondary subnets."""
        first_nat = next(iter(nats.values()))
        private_rts = []
        for az in azs:
            nat = nats.get(az, first_nat)
            rt = aws.ec2.RouteTable(
                f"{name}-private-{az}",
                aws.ec2.RouteTableArgs(
                    vpc_id=vpc.id,
                    routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat.id)],
                    tags=tagged(f"private-{az}"),
                ),
                opts=child,
            )
            for kind in ("private", "secondary"):
                if (kind, az) in subnets:
                    aws.ec2.RouteTableAssociation(
                        f"{name}-{kind}-{az}",
                        aws.ec2.RouteTableAssociationArgs(subnet_id=subnets[(kind, az)].id, route_table_id=rt.id),
                        opts=child,
                    )
            private_rts.append(rt)
        return private_rts

    @staticmethod
    def _endpoints(name: str, plan: StackPlan, vpc: aws.ec2.Vpc, azs: list[str], subnets: dict,
                   private_rts: list[aws.ec2.RouteTable], tagged, child: pulumi.ResourceOptions) -> None:
        """The S3 gateway endpoint on the private route tables; the interface endpoints asked for, with their
        group that takes HTTPS from the VPC's blocks."""
        net, region = plan.config.network, plan.config.region
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            aws.ec2.VpcEndpointArgs(
                vpc_id=vpc.id, service_name=f"com.amazonaws.{region}.s3", vpc_endpoint_type="Gateway",
                route_table_ids=[rt.id for rt in private_rts], tags=tagged("s3"),
            ),
            opts=child,
        )
        if not net.interface_endpoints:
            return
        endpoint_sg = aws.ec2.SecurityGroup(
            f"{name}-endpoints",
            aws.ec2.SecurityGroupArgs(vpc_id=vpc.id, description="Interface endpoints: HTTPS from the VPC", tags=tagged("endpoints")),
            opts=child,
        )
        for rule, cidr in (("https", net.vpc_cidr), ("https-secondary", net.secondary_cidr)):
            if cidr:
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-endpoints-{rule}",
                    aws.vpc.SecurityGroupIngressRuleArgs(
                        security_group_id=endpoint_sg.id, cidr_ipv4=cidr, ip_protocol="tcp", from_port=443, to_port=443,
                        description="HTTPS from the VPC",
                    ),
                    opts=child,
                )
        for service in net.interface_endpoints:
            aws.ec2.VpcEndpoint(
                f"{name}-{service.replace('.', '-')}",
                aws.ec2.VpcEndpointArgs(
                    vpc_id=vpc.id, service_name=f"com.amazonaws.{region}.{service}", vpc_endpoint_type="Interface",
                    private_dns_enabled=True, security_group_ids=[endpoint_sg.id],
                    subnet_ids=[subnets[("private", az)].id for az in azs], tags=tagged(service),
                ),
                opts=child,
            )

    @staticmethod
    def _flow_logs(name: str, cfg, vpc: aws.ec2.Vpc, tagged, child: pulumi.ResourceOptions) -> None:
        """Flow logs of all the VPC's traffic: to a log group of ours, which the flow-logs service writes to through a
        role that may write only there (and that only this account's flow logs may assume), or to the team's bucket."""
        if cfg.destination == "none":
            return
        args = dict(vpc_id=vpc.id, traffic_type="ALL", log_destination_type=cfg.destination, tags=tagged("flow-logs"))
        if cfg.destination == "s3":
            aws.ec2.FlowLog(f"{name}-flow-logs", aws.ec2.FlowLogArgs(log_destination=cfg.bucket_arn, **args), opts=child)
            return
        group = aws.cloudwatch.LogGroup(
            f"{name}-flow-logs", aws.cloudwatch.LogGroupArgs(retention_in_days=cfg.retention_days, tags=tagged("flow-logs")), opts=child,
        )
        account = aws.get_caller_identity_output().account_id
        role = aws.iam.Role(
            f"{name}-flow-logs",
            aws.iam.RoleArgs(
                assume_role_policy=account.apply(lambda account_id: json.dumps({
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Principal": {"Service": "vpc-flow-logs.amazonaws.com"}, "Action": "sts:AssumeRole",
                                   "Condition": {"StringEquals": {"aws:SourceAccount": account_id}}}],
                })),
                tags=tagged("flow-logs"),
            ),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-flow-logs",
            aws.iam.RolePolicyArgs(
                role=role.id,
                policy=group.arn.apply(lambda arn: json.dumps({
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                         "Resource": f"{arn}:*"},
                        # DescribeLogGroups takes no resource (Service Authorization Reference, CloudWatch Logs).
                        {"Effect": "Allow", "Action": "logs:DescribeLogGroups", "Resource": "*"},
                    ],
                })),
            ),
            opts=child,
        )
        aws.ec2.FlowLog(f"{name}-flow-logs", aws.ec2.FlowLogArgs(log_destination=group.arn, iam_role_arn=role.arn, **args), opts=child)

    @staticmethod
    def _efa_security_group(name: str, vpc_id: pulumi.Input[str], tagged, child: pulumi.ResourceOptions) -> pulumi.Output[str]:
        """All traffic from and to the group itself, egress to the world, nothing inbound from outside."""
        sg = aws.ec2.SecurityGroup(
            f"{name}-efa",
            aws.ec2.SecurityGroupArgs(
                vpc_id=vpc_id,
                description="EFA: all traffic within the group; egress to anywhere",
                tags=tagged("efa"),
            ),
            opts=child,
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-efa-in-self",
            aws.vpc.SecurityGroupIngressRuleArgs(
                security_group_id=sg.id, referenced_security_group_id=sg.id, ip_protocol="-1",
                description="EFA: all traffic from the group itself",
            ),
            opts=child,
        )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-efa-out-self",
            aws.vpc.SecurityGroupEgressRuleArgs(
                security_group_id=sg.id, referenced_security_group_id=sg.id, ip_protocol="-1",
                description="EFA: all traffic to the group itself",
            ),
            opts=child,
        )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-efa-out-world",
            aws.vpc.SecurityGroupEgressRuleArgs(
                security_group_id=sg.id, cidr_ipv4="0.0.0.0/0", ip_protocol="-1",
                description="Egress for image and data pulls",
            ),
            opts=child,
        )
        return sg.id
