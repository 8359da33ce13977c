"""What an EKS cluster needs for jobs' data: the EKS Pod Identity agent add-on, the FSx for Lustre CSI driver
(official chart, pinned) and, per file system, a static PersistentVolume and its claim."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from ..planning import fsx
from ..planning.data_access import POD_IDENTITY_AGENT


def pod_identity_agent(name: str, cluster_name: pulumi.Input[str], tags: dict[str, str],
                       opts: pulumi.ResourceOptions) -> aws.eks.Addon:
    """The agent (a DaemonSet on every node) that trades a pod's identity token for its role's credentials."""
    return aws.eks.Addon(f"{name}-pod-identity-agent",
                         aws.eks.AddonArgs(cluster_name=cluster_name, addon_name=POD_IDENTITY_AGENT, tags=tags), opts=opts)


def csi_chart() -> tuple[str, str, str]:
    c = fsx.facts()["csiDriver"]
    return c["chart"], c["repository"], c["version"]


def csi_values(region: str) -> dict:
    """Static volumes only: the controller (which creates file systems for dynamic claims) needs no AWS rights.
    The region is given to both so that neither looks for it in instance metadata, which the hop limit keeps from
    pods (the node plugin then reads the rest of its node's facts from the Kubernetes API: data/fsx_lustre.json)."""
    return {"controller": {"region": region}, "node": {"region": region}}


def static_volume(fleet: str, file_system: aws.fsx.LustreFileSystem, storage_gib: int, namespace: str,
                  opts: pulumi.ResourceOptions) -> k8s.core.v1.PersistentVolumeClaim:
    """A PersistentVolume for the existing file system and the claim bound to it by name; kept (Retain) when deleted."""
    c = fsx.facts()["csiDriver"]
    name = fsx.claim_name(fleet)
    capacity = {"storage": f"{storage_gib}Gi"}
    volume = k8s.core.v1.PersistentVolume(
        name,
        metadata=k8s.meta.v1.ObjectMetaArgs(name=name),
        spec=k8s.core.v1.PersistentVolumeSpecArgs(
            capacity=capacity, volume_mode="Filesystem", access_modes=["ReadWriteMany"],
            mount_options=["flock"], persistent_volume_reclaim_policy="Retain", storage_class_name="",
            csi=k8s.core.v1.CSIPersistentVolumeSourceArgs(
                driver=c["driver"], volume_handle=file_system.id,
                volume_attributes={"dnsname": file_system.dns_name, "mountname": file_system.mount_name},
            ),
        ),
        opts=opts,
    )
    return k8s.core.v1.PersistentVolumeClaim(
        name,
        metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace),
        spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
            access_modes=["ReadWriteMany"], storage_class_name="", volume_name=volume.metadata.name,
            resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests=capacity),
        ),
        opts=opts,
    )
