"""The offline plan as a Terraform plan (the JSON of `terraform show -json`), for
scanners that read Terraform plans (checkov, and others).

pulumi-aws is bridged from terraform-provider-aws, so every pulumi-aws resource
the program registers has a Terraform twin. Each becomes that resource type
with its inputs under their Terraform attribute names
(`data/terraform_names.json`, taken from pulumi-aws's bridge metadata and
checked against it by the tests): nested blocks as lists, values only AWS can
know marked unknown (`after_unknown`), and, where the engine says which
resource a value comes from, a reference to it in `configuration`, so that
rules across resources (a VPC's flow log, a group's rules) work.

The pulumi-eks cluster, a component whose own resources the offline plan
cannot see, appears as the `aws_eks_cluster` it creates, built from its inputs
the way pulumi-eks passes them on (nodejs/eks/cluster/cluster.ts). What else it
creates is not shown (see NOT_SHOWN). Kubernetes resources are not AWS
resources: the rendered job manifests are scanned as Kubernetes files instead.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from .mocks import Registered, is_placeholder

NAMES_FILE = Path(__file__).resolve().parent.parent / "data" / "terraform_names.json"
PROVIDER = "registry.terraform.io/hashicorp/aws"
# The plan format: `terraform show -json` of Terraform 1.5 (format_version 1.2). Scanners require
# terraform_version; no Terraform runs here (see the efa_infra section of the output).
FORMAT_VERSION, TERRAFORM_VERSION = "1.2", "1.5.0"
EKS_COMPONENT = "eks:index:Cluster"
EKS_CLUSTER = "aws:eks/cluster:Cluster"
# Not AWS resources: Kubernetes objects, providers, and our own components (their children are exported).
SKIPPED_PREFIXES = ("kubernetes:", "pulumi:providers:", "efa-infra:")
NOT_SHOWN = ("pulumi-eks also creates, not shown here: the cluster's IAM service role (AmazonEKSClusterPolicy), "
             "the kube-proxy and CoreDNS add-ons, and a Kubernetes provider from the kubeconfig; EKS itself "
             "creates the cluster security group and, with control-plane logging, the log group "
             "/aws/eks/<name>/cluster.")
_SECRET_SIG = "4dabf18193072939515e22adb298388d"  # how the engine marks a secret value
_PLACEHOLDER = re.compile(r"^<(?P<name>[^.]+)\.(?P<attr>[A-Za-z.]+)>$")


class ExportError(ValueError):
    """A resource or input the export has no Terraform name for."""


@lru_cache(maxsize=1)
def names() -> dict:
    return json.loads(NAMES_FILE.read_text())


def _tf_name(name: str) -> str:
    """A Pulumi resource name as a Terraform resource name (letters, digits, '_' and '-')."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def eks_cluster_inputs(inputs: dict) -> dict:
    """The inputs pulumi-eks gives the aws.eks.Cluster it creates, from the eks.Cluster's own."""
    vpc = {"subnetIds": inputs.get("privateSubnetIds") or inputs.get("subnetIds"),
           "endpointPrivateAccess": inputs.get("endpointPrivateAccess"),
           "endpointPublicAccess": inputs.get("endpointPublicAccess"),
           "publicAccessCidrs": inputs.get("publicAccessCidrs")}
    out: dict[str, Any] = {
        "name": inputs.get("name"),
        "version": inputs.get("version"),
        "vpcConfig": {k: v for k, v in vpc.items() if v is not None},
        # pulumi-eks makes the service role itself.
        "roleArn": f"<{inputs.get('name')}-eksRole.arn>",
        "bootstrapSelfManagedAddons": True,
        "tags": {"Name": f"{inputs.get('name')}-eksCluster", **(inputs.get("tags") or {})},
    }
    if not inputs.get("skipDefaultSecurityGroups"):
        out["vpcConfig"]["securityGroupIds"] = ["<eksClusterSecurityGroup.id>"]
    if inputs.get("enabledClusterLogTypes") is not None:
        out["enabledClusterLogTypes"] = inputs["enabledClusterLogTypes"]
    if inputs.get("encryptionConfigKeyArn"):
        out["encryptionConfig"] = {"provider": {"keyArn": inputs["encryptionConfigKeyArn"]}, "resources": ["secrets"]}
    if inputs.get("authenticationMode"):
        out["accessConfig"] = {"authenticationMode": inputs["authenticationMode"], "bootstrapClusterCreatorAdminPermissions": True}
    return out


class _Exporter:
    def __init__(self, resources: list[Registered]):
        self.by_urn = {r.urn: r for r in resources}
        self.address: dict[str, tuple[str, str]] = {}  # urn -> (terraform type, name)
        for r in resources:
            typ = EKS_CLUSTER if r.type == EKS_COMPONENT else r.type
            if typ in names()["resources"]:
                self.address[r.urn] = (names()["resources"][typ]["terraform"], _tf_name(r.name))

    def reference(self, value: str, dependencies: list[str]) -> list[str]:
        """The Terraform references of a placeholder, found among the resources its input depends on."""
        m = _PLACEHOLDER.match(value)
        if not m:
            return []
        for urn in dependencies:
            if urn in self.address and self.by_urn[urn].name == m["name"]:
                typ, name = self.address[urn]
                parts = m["attr"].split(".")
                attr = ".".join(_snake(p) + ("[0]" if i < len(parts) - 1 else "") for i, p in enumerate(parts))
                return [f"{typ}.{name}.{attr}", f"{typ}.{name}"]
        return []

    def convert(self, token: str, inputs: dict, deps: Callable[[str], list[str]],
                types_key: str = "resources") -> tuple[dict, dict, dict]:
        """Inputs of `token` -> (known values, after_unknown, configuration expressions), in Terraform names.
        `deps(key)`: the resources the input came from, among which its placeholders' references are found
        (a subnet and its route table share a name: only the input's own dependencies tell them apart)."""
        spec = names()[types_key][token]
        attributes = spec["attributes"]
        values: dict = {}
        unknown: dict = {}
        exprs: dict = {}
        for key, value in inputs.items():
            if value is None or key.startswith("__"):
                continue
            if key not in attributes:
                raise ExportError(f"{token}: input {key!r} has no Terraform name in {NAMES_FILE.name}; add it from the bridge metadata")
            entry = attributes[key]
            value = _unsecret(value)
            if isinstance(entry, list):  # a nested block: always a list in Terraform
                tf, nested = entry
                items = value if isinstance(value, list) else [value]
                converted = [self.convert(nested, item, lambda _, k=key: deps(k), "types") for item in items]
                values[tf] = [c[0] for c in converted]
                if any(c[1] for c in converted):
                    unknown[tf] = [c[1] for c in converted]
                exprs[tf] = [c[2] for c in converted]
                continue
            tf = entry
            if is_placeholder(value):
                unknown[tf] = True
                refs = self.reference(value, deps(key))
                exprs[tf] = {"references": refs} if refs else {}
            elif isinstance(value, list) and any(is_placeholder(v) for v in value):
                values[tf] = [None if is_placeholder(v) else _number(v) for v in value]
                unknown[tf] = [is_placeholder(v) for v in value]
                refs = [ref for v in value if is_placeholder(v) for ref in self.reference(v, deps(key))]
                exprs[tf] = {"references": refs} if refs else {}
            else:
                values[tf] = _number(value)
                exprs[tf] = {"constant_value": values[tf]}
        return values, unknown, exprs

    def resource(self, r: Registered) -> tuple[dict, dict, dict] | None:
        if r.type.startswith(SKIPPED_PREFIXES):
            return None
        inputs, token = r.inputs, r.type
        if r.type == EKS_COMPONENT:
            inputs, token = eks_cluster_inputs(r.inputs), EKS_CLUSTER
        elif not r.custom:
            raise ExportError(f"{r.type} {r.name}: a component the export cannot see into")
        if token not in names()["resources"]:
            raise ExportError(f"{r.type} {r.name}: no Terraform type in {NAMES_FILE.name}; add it from the bridge metadata")
        if r.type == EKS_COMPONENT:  # its inputs were renamed into the cluster's: any of its dependencies may serve
            every = [urn for urns in r.dependencies.values() for urn in urns]
            values, unknown, exprs = self.convert(token, inputs, lambda _: every)
        else:
            values, unknown, exprs = self.convert(token, inputs, lambda key: r.dependencies.get(key, []))
        typ, name = self.address[r.urn]
        head = {"address": f"{typ}.{name}", "mode": "managed", "type": typ, "name": name, "provider_name": PROVIDER}
        planned = {**head, "schema_version": 0, "values": values, "sensitive_values": {}}
        change = {**head, "change": {"actions": ["create"], "before": None, "after": values, "after_unknown": unknown,
                                     "before_sensitive": False, "after_sensitive": {}}}
        config = {k: v for k, v in head.items() if k != "provider_name"}
        config.update(provider_config_key="aws", expressions=exprs, schema_version=0)
        return planned, change, config


def _unsecret(value: Any) -> Any:
    if isinstance(value, dict) and _SECRET_SIG in value:
        return value.get("value")
    return value


def _number(value: Any) -> Any:
    """Numbers arrive as floats from the engine; Terraform shows whole numbers as integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_number(v) for v in value]
    if isinstance(value, dict):
        return {k: _number(v) for k, v in value.items()}
    return value


def export(resources: list[Registered], region: str, stack: str) -> dict:
    """The Terraform plan JSON of an offline run's registrations."""
    ex = _Exporter(resources)
    planned, changes, config = [], [], []
    for r in resources:
        out = ex.resource(r)
        if out:
            planned.append(out[0])
            changes.append(out[1])
            config.append(out[2])
    return {
        "format_version": FORMAT_VERSION,
        "terraform_version": TERRAFORM_VERSION,
        "planned_values": {"root_module": {"resources": planned}},
        "resource_changes": changes,
        "configuration": {
            "provider_config": {"aws": {"name": "aws", "full_name": PROVIDER, "expressions": {"region": {"constant_value": region}}}},
            "root_module": {"resources": config},
        },
        "efa_infra": {
            "stack": stack,
            "source": "efa-infra offline plan (Pulumi mocks); no Terraform and no AWS call were involved",
            "not_shown": NOT_SHOWN if any(r.type == EKS_COMPONENT for r in resources) else None,
        },
    }
