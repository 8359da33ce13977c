"""The whole stack config: every section, and the catalog its declared instance types extend."""

from __future__ import annotations

from pydantic import Field

from ..catalog import Catalog, from_data
from .base import Model
from .eks import EksConfig
from .fleets import FleetConfig, InstanceTypeSpec
from .jobs import ClusterConfig, JobConfig
from .network import NetworkConfig


class StackConfig(Model):
    """Everything one stack (environment) asks for."""

    region: str = Field(..., description="AWS region, from aws:region.")
    network: NetworkConfig = Field(default_factory=NetworkConfig, description="The VPC and its subnets.")
    fleets: list[FleetConfig] = Field(default_factory=list, description="GPU fleets, each in one AZ and placement group.")
    instance_types: dict[str, InstanceTypeSpec] = Field(default_factory=dict, description="Instance types the shipped AWS data lacks, by name.")
    eks: EksConfig = Field(default_factory=EksConfig, description="The optional EKS cluster.")
    clusters: list[ClusterConfig] = Field(default_factory=list, description="Clusters this stack does not manage, as job targets.")
    jobs: list[JobConfig] = Field(default_factory=list, description="Training jobs rendered for the fleets and clusters.")
    protect: bool | None = Field(
        None,
        description="Mark the VPC, its CIDR blocks, subnets and NAT gateways, the EKS cluster, its node groups and the FSx "
        "file systems protected "
        "(Pulumi protect: no update or destroy can delete them). Default: true for production stacks, whose name starts with prod.",
    )

    def catalog(self) -> Catalog:
        return catalog_for(self.instance_types)

    def fleet(self, name: str) -> FleetConfig:
        return next(f for f in self.fleets if f.name == name)


def catalog_for(specs: dict[str, InstanceTypeSpec]) -> Catalog:
    return Catalog({name: from_data(name, spec.model_dump(by_alias=True), custom=True) for name, spec in specs.items()})
