"""FsxLustre: a fleet's FSx for Lustre file system, PERSISTENT_2 in the fleet's AZ and subnet, with its security
group and its links to S3 (data repository associations).

The group holds the file system and the fleet's nodes (each interface of the launch template carries it), and
admits what Lustre needs within itself: LNet on TCP 988 and 1018-1023, and with EFA all traffic, as an
EFA-enabled file system requires (data/fsx_lustre.json).
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from ..planning import fsx
from ..planning.config.data import FsxConfig
from .kms import account_key


class FsxLustre(pulumi.ComponentResource):
    file_system: aws.fsx.LustreFileSystem
    security_group_id: pulumi.Output[str]
    mount_path: str

    def __init__(self, name: str, cfg: FsxConfig, efa: bool, vpc_id: pulumi.Input[str], subnet_id: pulumi.Input[str],
                 tags: dict[str, str], opts: pulumi.ResourceOptions | None = None):
        """`name`: the fleet's; `efa`: as fsx.efa_enabled decided for the fleet."""
        super().__init__("efa-infra:index:FsxLustre", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tagged = {**tags, "Name": f"{name}-fsx"}
        self.mount_path = cfg.mount_path
        self.security_group_id = self._security_group(name, efa, vpc_id, tagged, child)
        facts = fsx.facts()
        # Replacing the key would replace the file system: it is the file system's own, created with it.
        key = account_key(f"{name}-fsx", f"FSx for Lustre file system of fleet {name}", tagged, child)
        self.file_system = aws.fsx.LustreFileSystem(
            f"{name}-fsx",
            aws.fsx.LustreFileSystemArgs(
                subnet_ids=subnet_id,
                security_group_ids=[self.security_group_id],
                deployment_type=facts["deploymentType"],
                storage_type=facts["storageType"],
                storage_capacity=cfg.storage_gib,
                per_unit_storage_throughput=cfg.throughput_per_tib,
                metadata_configuration=aws.fsx.LustreFileSystemMetadataConfigurationArgs(mode=facts["metadataConfiguration"]["mode"]),
                efa_enabled=efa,
                kms_key_id=key.arn,
                tags=tagged,
            ),
            opts=child,
        )
        for k, repo in enumerate(cfg.data_repositories):
            events = ["NEW", "CHANGED", "DELETED"]
            aws.fsx.DataRepositoryAssociation(
                f"{name}-fsx-repo-{k}",
                aws.fsx.DataRepositoryAssociationArgs(
                    file_system_id=self.file_system.id,
                    data_repository_path=repo.s3,
                    file_system_path=repo.path,
                    batch_import_meta_data_on_create=repo.auto_import,
                    s3=aws.fsx.DataRepositoryAssociationS3Args(
                        auto_import_policy=aws.fsx.DataRepositoryAssociationS3AutoImportPolicyArgs(events=events) if repo.auto_import else None,
                        auto_export_policy=aws.fsx.DataRepositoryAssociationS3AutoExportPolicyArgs(events=events) if repo.auto_export else None,
                    ),
                    tags=tagged,
                ),
                opts=child,
            )
        self.register_outputs({"fileSystemId": self.file_system.id, "dnsName": self.file_system.dns_name,
                               "mountName": self.file_system.mount_name, "securityGroupId": self.security_group_id})

    @staticmethod
    def _security_group(name: str, efa: bool, vpc_id: pulumi.Input[str], tagged: dict[str, str],
                        child: pulumi.ResourceOptions) -> pulumi.Output[str]:
        sg = aws.ec2.SecurityGroup(
            f"{name}-fsx",
            aws.ec2.SecurityGroupArgs(vpc_id=vpc_id, description="FSx for Lustre: LNet (and EFA) between the file system and its clients",
                                      tags=tagged),
            opts=child,
        )
        rules: list[tuple[str, str, int | None, int | None, str]] = [
            (f"lnet-{low}", "tcp", low, high, f"Lustre LNet TCP {low}-{high} within the group") for low, high in fsx.lnet_ports()]
        if efa:
            rules.append(("efa", "-1", None, None, "EFA: all traffic within the group (an EFA-enabled file system needs it)"))
        for rule, protocol, low, high, description in rules:
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-fsx-in-{rule}",
                aws.vpc.SecurityGroupIngressRuleArgs(security_group_id=sg.id, referenced_security_group_id=sg.id,
                                                     ip_protocol=protocol, from_port=low, to_port=high, description=description),
                opts=child,
            )
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-fsx-out-{rule}",
                aws.vpc.SecurityGroupEgressRuleArgs(security_group_id=sg.id, referenced_security_group_id=sg.id,
                                                    ip_protocol=protocol, from_port=low, to_port=high, description=description),
                opts=child,
            )
        return sg.id
