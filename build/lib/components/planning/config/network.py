"""The network section: a VPC to create (CIDR blocks, explicit subnets, NAT, endpoints, flow logs) or an
existing one."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .. import addressing
from .base import Model


class ExistingNetwork(Model):
    vpc_id: str | None = Field(None, pattern=r"^vpc-[0-9a-f]{8,17}$", description="The existing VPC's id (or give vpcName).")
    vpc_name: str | None = Field(None, min_length=1, description="The existing VPC's Name tag (or give vpcId).")
    private_subnet_ids: dict[str, str] = Field(
        ..., min_length=1,
        description="The private subnet to use in each AZ, e.g. {us-east-1a: subnet-0abc...}. Each is read at deploy "
        "time and refused if it assigns public IPs, lies in another AZ or lacks free addresses for its fleets.",
    )

    @field_validator("private_subnet_ids")
    @classmethod
    def _subnet_ids(cls, v: dict[str, str]) -> dict[str, str]:
        bad = {az: s for az, s in v.items() if not re.fullmatch(r"subnet-[0-9a-f]{8,17}", s)}
        if bad:
            raise ValueError(f"not subnet ids (subnet-...): {bad}")
        return v

    @model_validator(mode="after")
    def _one_vpc(self) -> "ExistingNetwork":
        if (self.vpc_id is None) == (self.vpc_name is None):
            raise ValueError("give exactly one of vpcId and vpcName")
        return self


# CloudWatch Logs' retention values (PutRetentionPolicy), in days.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)


class FlowLogsConfig(Model):
    destination: Literal["cloud-watch-logs", "s3", "none"] = Field(
        "cloud-watch-logs",
        description="Where the VPC's flow logs (all traffic) go: cloud-watch-logs (a log group of the stack's, written "
        "through a role that may write only to it), s3 (the bucket in bucketArn), or none.",
    )
    bucket_arn: str | None = Field(
        None, pattern=r"^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
        description="For destination s3: the bucket, optionally with a /prefix, e.g. arn:aws:s3:::my-flow-logs/vpc; "
        "its bucket policy must let delivery.logs.amazonaws.com write to it.",
    )
    retention_days: int = Field(365, description="For destination cloud-watch-logs: days the log group keeps flow logs.")

    @field_validator("retention_days")
    @classmethod
    def _retention(cls, v: int) -> int:
        if v not in LOG_RETENTION_DAYS:
            raise ValueError(f"CloudWatch Logs keeps logs for one of {', '.join(map(str, LOG_RETENTION_DAYS))} days")
        return v

    @model_validator(mode="after")
    def _bucket_with_s3(self) -> "FlowLogsConfig":
        if (self.destination == "s3") != (self.bucket_arn is not None):
            raise ValueError("bucketArn goes with destination s3, and only with it")
        return self


def _ipv4_network(v: str, example: str) -> str:
    try:
        return str(ipaddress.IPv4Network(v))
    except ValueError as exc:
        raise ValueError(f"not an IPv4 CIDR ({exc}); for example {example}") from None


def _address_block(v: str, example: str) -> str:
    net = ipaddress.IPv4Network(_ipv4_network(v, example))
    if not 16 <= net.prefixlen <= addressing.MAX_BLOCK_PREFIX:
        raise ValueError(f"/{net.prefixlen} is outside what the address plan takes: /16 to /{addressing.MAX_BLOCK_PREFIX} "
                         f"(AWS allows /16 to /28; the plan keeps an eighth per AZ and /28 public subnets at the least)")
    return str(net)


class SubnetCidrs(Model):
    private: str | None = Field(None, description="The AZ's private subnet, inside vpcCidr. Default: the AZ's slot (an eighth of the VPC by AZ letter).")
    public: str | None = Field(None, description="The AZ's public subnet (NAT), inside vpcCidr. Default: the AZ's /26 (or smaller) in the VPC's last eighth.")
    secondary: str | None = Field(None, description="The AZ's private subnet in secondaryCidr. Default: the AZ's eighth of that block.")

    @field_validator("private", "public", "secondary")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is None:
            return v
        net = ipaddress.IPv4Network(_ipv4_network(v, "10.40.0.0/18"))
        if not 16 <= net.prefixlen <= addressing.SMALLEST_SUBNET_PREFIX:
            raise ValueError(f"/{net.prefixlen} is outside what a subnet may be: /16 to /28")
        return str(net)


class NetworkConfig(Model):
    existing: ExistingNetwork | None = Field(
        None,
        description="Use an existing VPC and private subnets instead of creating them; only the EFA security group "
        "and the fleets' resources are created in it.",
    )
    vpc_cidr: str = Field(
        "10.0.0.0/16",
        description="IPv4 CIDR of the VPC, /16 to /22. Each AZ's private subnet is the eighth of it its AZ letter "
        "names (a: the first, ... g: the seventh); the last eighth holds the public subnets.",
    )
    secondary_cidr: str | None = Field(
        None,
        description="A secondary IPv4 CIDR block for the VPC (/16 to /22, e.g. 100.64.0.0/16), for fleets that outgrow "
        "their subnet (fleets[].subnet: secondary). Every AZ gets a private subnet in it, planned as in vpcCidr.",
    )
    subnet_cidrs: dict[str, SubnetCidrs] = Field(
        default_factory=dict,
        description="Explicit subnet CIDRs by AZ, e.g. {us-east-1a: {private: 10.40.0.0/18}}, instead of the AZ's slot: "
        "for a fleet larger than its slot, or to keep a subnet an earlier plan made. Changing one replaces that subnet.",
    )
    nat_availability_zone: str | None = Field(
        None,
        description="With natGateways single, the AZ of the one NAT gateway. Default: the stack's AZ of the lowest letter.",
    )
    nat_gateways: Literal["single", "per-az"] = Field(
        "single",
        description="NAT for egress: one gateway for the VPC (cheaper), or one per AZ (no cross-AZ dependency).",
    )
    interface_endpoints: list[Literal["ecr.api", "ecr.dkr", "sts", "ssm", "ssmmessages", "ec2messages", "logs"]] = Field(
        default_factory=list,
        description="Interface VPC endpoints to create, so image pulls and API calls skip the NAT. "
        "An S3 gateway endpoint is always created.",
    )
    availability_zones: list[str] = Field(
        default_factory=list,
        description="AZs that get subnets besides the fleets' and the cluster's own (eks.availabilityZones).",
    )
    flow_logs: FlowLogsConfig = Field(default_factory=FlowLogsConfig, description="The VPC's flow logs.")
    public_ip_on_launch: bool = Field(
        False,
        description="Public subnets give instances launched in them a public IPv4 address. Default false: only the NAT "
        "gateways live there, and they have Elastic IPs; true for a team that launches hosts such as bastions there.",
    )

    @model_validator(mode="after")
    def _existing_excludes_creation(self) -> "NetworkConfig":
        if self.existing is not None:
            clash = sorted(type(self).model_fields[k].alias or k for k in self.model_fields_set - {"existing"})
            if clash:
                raise ValueError(f"{', '.join(clash)} describe a VPC to create; with existing they are not used: remove them")
        return self

    @field_validator("vpc_cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        return _address_block(v, "10.0.0.0/16")

    @field_validator("secondary_cidr")
    @classmethod
    def _secondary(cls, v: str | None) -> str | None:
        return None if v is None else _address_block(v, "100.64.0.0/16")

    @model_validator(mode="after")
    def _secondary_allowed(self) -> "NetworkConfig":
        why = self.secondary_cidr and addressing.secondary_block_refusal(self.vpc_cidr, self.secondary_cidr)
        if why:
            raise ValueError(f"secondaryCidr {self.secondary_cidr}: {why}")
        return self
