"""Wires the components from a validated stack config: what `pulumi up` runs.

The config is read and validated in full before the first resource is
registered, so an invalid stack creates nothing.
"""

from __future__ import annotations

import pulumi
import pulumi.runtime.config as runtime_config

from . import config as config_mod
from . import plan as plan_mod
from .fleet import EfaFleet
from .network import EfaNetwork


def settings_from_engine() -> dict:
    """Every config value the engine handed the program, as `{"ns:key": value}`."""
    return {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}


def load_config() -> config_mod.StackConfig:
    """The stack's config as `pulumi up` sees it; invalid config ends the run
    with the list of problems and no Python traceback."""
    try:
        return config_mod.load(config_mod.document_from_settings(settings_from_engine()), f"stack {pulumi.get_stack()}")
    except config_mod.ConfigError as err:
        raise pulumi.RunError(str(err)) from None


def build(cfg: config_mod.StackConfig, stack: str) -> dict[str, pulumi.Output]:
    """Register the stack's resources; returns the stack outputs."""
    plan = plan_mod.build(cfg)
    tags = {"efa-infra:stack": stack}
    net = EfaNetwork("efa", plan, tags)
    outputs: dict = {
        "vpcId": net.vpc_id,
        "privateSubnetIds": net.private_subnet_ids,
        "securityGroupId": net.security_group_id,
    }
    cluster = None
    security_groups = [net.security_group_id]
    if cfg.eks.enabled:
        from .eks import EfaCluster  # pulumi-eks and pulumi-kubernetes load only for EKS stacks

        cluster = EfaCluster("eks", plan, stack, net.private_subnet_ids, net.vpc_id, tags)
        # A launch template's security groups replace EKS's own: add the one that reaches the control plane.
        security_groups.append(cluster.node_security_group_id)
        outputs["clusterName"] = cluster.name
        outputs["kubeconfig"] = cluster.kubeconfig
    fleets = {}
    for fp in plan.fleets:
        subnet_id = net.private_subnet_ids[fp.config.availability_zone]
        fleets[fp.name] = EfaFleet(fp.name, fp, stack, subnet_id=subnet_id, security_group_ids=security_groups, tags=tags)
        if cluster is not None:
            cluster.node_group(fp, fleets[fp.name].launch_template, subnet_id, tags)
    outputs["placementGroups"] = {n: f.placement_group_name for n, f in fleets.items() if f.placement_group_name is not None}
    outputs["launchTemplates"] = {
        n: {"id": f.launch_template.id, "version": f.launch_template.latest_version} for n, f in fleets.items()
    }
    outputs["autoScalingGroups"] = {n: f.asg_name for n, f in fleets.items() if f.asg_name is not None}
    return outputs


def main() -> None:
    cfg = load_config()
    for key, value in build(cfg, pulumi.get_stack()).items():
        pulumi.export(key, value)
