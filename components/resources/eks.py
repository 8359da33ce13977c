"""EfaCluster: the optional EKS cluster, its EFA node groups and add-ons.

The control plane is a pulumi-eks `Cluster` (a remote component: only its
inputs are visible offline). Everything that decides whether EFA works is
built from pulumi-aws and pulumi-kubernetes resources instead, so each input
can be checked before deploying: the managed node groups that launch from
the fleets' EFA launch templates, the VPC CNI add-on version that handles
`efa-only` interfaces, and the device plugins' tolerations and selectors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_eks as eks
import pulumi_kubernetes as k8s

from ..planning import deployer, devices, eks_rules
from ..planning.launch import trainjob
from ..planning.existing import ClusterFacts, kubeconfig
from ..planning.capacity_window import Schedule
from . import eks_data
from .kms import account_key
from .fleet import block_schedules, node_role, window_sizes
from ..planning.plan import ACCELERATOR_LABEL, EFA_LABEL, FLEET_TAG, FleetPlan, StackPlan

SYSTEM_INSTANCE_TYPE = "m6i.large"  # cluster add-ons (CoreDNS, controllers) stay off the GPU nodes
NODE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEC2ContainerRegistryPullOnly", "AmazonEKS_CNI_Policy")
EFA_PLUGIN = ("aws-efa-k8s-device-plugin", "https://aws.github.io/eks-charts", "v0.5.30")
NVIDIA_PLUGIN = ("nvidia-device-plugin", "https://nvidia.github.io/k8s-device-plugin", "0.20.0")
NEURON_PLUGIN = devices.driver("neuron").chart  # one chart runs the Neuron device plugin or its DRA driver (OCI: no repository)
# Our kustomize overlay of the training operator: PyTorchJob only, so that it can sit beside the MPI operator.
# Relative to the project directory, where Pulumi runs the program and its providers: an absolute path would put
# the checkout's location in the state, and a laptop's preview would differ from a pipeline's. From a checkout
# these are components/manifests/...; from an installed package, the paths into the project's venv.
MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
TRAINING_OPERATOR = os.path.relpath(MANIFESTS / "training-operator")
TRAINER = os.path.relpath(MANIFESTS / "trainer")  # Kubeflow Trainer v2 with JobSet, pinned like the training operator
MPI_OPERATOR = "https://raw.githubusercontent.com/kubeflow/mpi-operator/v0.6.0/deploy/v2beta1/mpi-operator.yaml"
# Pod Security Admission level of the jobs' namespaces: IPC_LOCK, which EFA needs, is outside baseline
# (Kubernetes, "Pod Security Standards": baseline allows adding only its listed capabilities).
JOB_POD_SECURITY = {"pod-security.kubernetes.io/enforce": "privileged"}


def ami_type(fp: FleetPlan) -> str | None:
    """EKS picks the accelerated AMI from this; with a pinned AMI in the launch template EKS takes none."""
    if fp.config.ami:
        return None
    return eks_rules.ami_type(fp.itype.accelerator.kind if fp.itype.accelerator else None, fp.itype.architecture)


def _tolerations(plan: StackPlan) -> list[dict]:
    taints = {json.dumps(t, sort_keys=True) for fp in plan.fleets for t in fp.node_taints}
    return [{"key": t["key"], "operator": "Exists", "effect": t["effect"]} for t in map(json.loads, sorted(taints))]


def _affinity(label: str, value: str) -> dict:
    """A required node affinity to nodes with label=value, as the one term of its list."""
    term = {"matchExpressions": [{"key": label, "operator": "In", "values": [value]}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def _release(name: str, chart: tuple[str, str | None, str], opts: pulumi.ResourceOptions, values: dict,
             namespace: str = "kube-system") -> k8s.helm.v3.Release:
    """A pinned chart (name, repository, version), in kube-system unless it asks for a namespace of its own."""
    chart_name, repo, version = chart
    return k8s.helm.v3.Release(
        name,
        k8s.helm.v3.ReleaseArgs(chart=chart_name, version=version, namespace=namespace,
                                create_namespace=True if namespace != "kube-system" else None,
                                repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=repo) if repo else None, values=values),
        opts=opts,
    )


class EfaCluster(pulumi.ComponentResource):
    # Its attributes, not class annotations: the annotated attributes are the component package's outputs
    # (resources/hosted.py), each typed, and a provider or a list of resources is no output.
    #   name (str), node_security_group_id and kubeconfig (outputs), node_role;
    #   provider: the cluster's kubernetes provider;
    #   namespaces: the jobs' namespaces, on a cluster the stack creates;
    #   node_join: nodeadm's spec.cluster, for fleets that pin an AMI;
    #   ready: the cluster, or for one the stack joins the node role's access entry;
    #   base: what a workload of the cluster's own waits for (Karpenter's controller): `ready`, and on a cluster the
    #   stack creates its system nodes and the add-ons their pods need (VPC CNI, Pod Identity agent).

    def __init__(self, name: str, plan: StackPlan, stack: str, private_subnet_ids: dict[str, pulumi.Input[str]],
                 vpc_id: pulumi.Input[str], tags: dict[str, str], existing: ClusterFacts | None = None,
                 opts: pulumi.ResourceOptions | None = None):
        """With `existing` (eks.existing, already read) the node groups join that cluster and
        only the node role, its access entry and (if asked) the device plugins are created."""
        super().__init__("efa-infra:index:EfaCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cfg = plan.config.eks
        self._node_group_version = cfg.node_group_version
        self.node_role, attachments = self._node_role(name, tags, child)
        if existing is not None:
            ready: list[pulumi.Resource] = [self._join_existing(name, plan, existing, tags, child)]
            self.base = list(ready)
            device_plugins = cfg.existing.device_plugins
        else:
            cluster, vpc_cni = self._create_cluster(name, plan, stack, private_subnet_ids, vpc_id, tags, child)
            self._admit_deployer(name, plan, tags, [cluster])
            system = self._system_nodes(name, private_subnet_ids, tags, cfg.node_group_version, [cluster, *attachments])
            ready = [cluster]
            self.base = [cluster, vpc_cni, system]
            device_plugins = True
        self.ready = ready  # what resources in the cluster (or naming it, as pod identity associations do) wait for
        self._node_deps = pulumi.ResourceOptions(parent=self, depends_on=[*ready, *attachments])
        self.provider = k8s.Provider(f"{name}-k8s", k8s.ProviderArgs(kubeconfig=self.kubeconfig),
                                     opts=pulumi.ResourceOptions(parent=self, depends_on=ready))
        on_k8s = pulumi.ResourceOptions(parent=self, provider=self.provider)
        if cfg.devices == "dra":  # config.load allows it only on a cluster the stack creates
            self._dra_drivers(name, plan, on_k8s)
        elif device_plugins:
            self._device_plugins(name, plan, on_k8s)
        self._data(name, plan, existing is None, ready, tags, on_k8s)
        # A cluster setting like the operators: deleting a namespace deletes every job in it.
        self.namespaces = [] if existing is not None else [
            k8s.core.v1.Namespace(f"{name}-ns-{ns}", metadata=k8s.meta.v1.ObjectMetaArgs(name=ns, labels=JOB_POD_SECURITY), opts=on_k8s)
            for ns in cfg.namespaces
        ]
        self._operators(name, cfg.operators, on_k8s)
        self.register_outputs({"clusterName": self.name, "kubeconfig": self.kubeconfig})

    @staticmethod
    def _node_role(name: str, tags: dict[str, str], child: pulumi.ResourceOptions) -> tuple[aws.iam.Role, list[aws.iam.RolePolicyAttachment]]:
        """The role of every node group's nodes, with EKS's worker, registry and CNI policies."""
        role = node_role(f"{name}-node", tags, child)
        attachments = [
            aws.iam.RolePolicyAttachment(
                f"{name}-node-{policy}",
                aws.iam.RolePolicyAttachmentArgs(role=role.name, policy_arn=f"arn:aws:iam::aws:policy/{policy}"),
                opts=child,
            )
            for policy in NODE_POLICIES
        ]
        return role, attachments

    def _join_existing(self, name: str, plan: StackPlan, existing: ClusterFacts, tags: dict[str, str],
                       child: pulumi.ResourceOptions) -> aws.eks.AccessEntry:
        """The existing cluster's facts, and the access entry that lets the node role in."""
        self.name = existing.name
        self.node_security_group_id = pulumi.Output.from_input(existing.security_group_id)  # EKS's cluster group
        self.kubeconfig = pulumi.Output.secret(json.dumps(kubeconfig(existing, plan.config.region)))
        self.node_join = existing.node_join()
        # Managed node groups of a cluster we did not create need their role let in.
        return aws.eks.AccessEntry(
            f"{name}-node-access",
            aws.eks.AccessEntryArgs(cluster_name=self.name, principal_arn=self.node_role.arn, type="EC2_LINUX", tags=tags),
            opts=child,
        )

    def _admit_deployer(self, name: str, plan: StackPlan, tags: dict[str, str], after: list[pulumi.Resource]) -> None:
        """TCP 443 into the cluster security group, which holds the private API endpoint, from each place `pulumi up`
        runs that comes that way (planning/deployer.py decides which)."""
        for source in deployer.admitted(plan.config):
            peer = source.group or source.cidr.replace("/", "-")
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-deployer-{peer}",
                aws.vpc.SecurityGroupIngressRuleArgs(
                    security_group_id=self.node_security_group_id, ip_protocol="tcp", from_port=443, to_port=443,
                    referenced_security_group_id=source.group, cidr_ipv4=source.cidr,
                    # Fixed text: EC2 takes only some characters in a rule's description, and a runner label may have others.
                    description="pulumi up to the API server (efa-infra eks.deployer)", tags=tags,
                ),
                opts=pulumi.ResourceOptions(parent=self, depends_on=after),
            )

    def _system_nodes(self, name: str, private_subnet_ids: dict[str, pulumi.Input[str]], tags: dict[str, str],
                      version: str | None, after: list[pulumi.Resource]) -> aws.eks.NodeGroup:
        """The node group for cluster add-ons (CoreDNS, controllers), off the GPU nodes."""
        return aws.eks.NodeGroup(
            f"{name}-system",
            aws.eks.NodeGroupArgs(
                cluster_name=self.name, node_role_arn=self.node_role.arn, subnet_ids=list(private_subnet_ids.values()),
                instance_types=[SYSTEM_INSTANCE_TYPE], ami_type="AL2023_x86_64_STANDARD", version=version,
                scaling_config=aws.eks.NodeGroupScalingConfigArgs(min_size=2, desired_size=2, max_size=3),
                labels={"efa-infra/role": "system"}, tags=tags,
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=after),
        )

    def _create_cluster(self, name: str, plan: StackPlan, stack: str, private_subnet_ids: dict[str, pulumi.Input[str]],
                        vpc_id: pulumi.Input[str], tags: dict[str, str],
                        child: pulumi.ResourceOptions) -> tuple[eks.Cluster, aws.eks.Addon]:
        """The control plane, and its VPC CNI add-on."""
        cfg = plan.config.eks
        self.name = f"{stack}-{name}"
        key = account_key(f"{name}-secrets", f"EKS secrets encryption for {self.name}", tags, child)
        cluster = eks.Cluster(
            f"{name}-cluster",
            eks.ClusterArgs(
                name=self.name,
                version=cfg.version,
                vpc_id=vpc_id,
                private_subnet_ids=list(private_subnet_ids.values()),
                authentication_mode="API",
                endpoint_private_access=True,
                endpoint_public_access=bool(cfg.public_access_cidrs),
                public_access_cidrs=cfg.public_access_cidrs or None,
                encryption_config_key_arn=key.arn,
                enabled_cluster_log_types=cfg.log_types or None,
                skip_default_node_group=True,
                # No groups of pulumi-eks's own: the control plane, the system nodes (no launch template) and, through
                # their launch templates, the fleets' nodes all carry EKS's cluster group, which admits itself.
                # pulumi-eks then returns that group as node_security_group_id.
                skip_default_security_groups=True,
                # The VPC CNI is managed below as an add-on pinned to a version that handles efa-only.
                use_default_vpc_cni=True,
                node_associate_public_ip_address=False,
                tags=tags,
            ),
            opts=child,
        )
        self.node_security_group_id = cluster.node_security_group_id
        self.kubeconfig = pulumi.Output.secret(cluster.kubeconfig_json)
        # Read back from EKS once the cluster exists (the service CIDR is EKS's choice), for pinned-AMI fleets only.
        self.node_join = None
        if any(fp.config.ami for fp in plan.fleets):
            info = aws.eks.get_cluster_output(name=self.name, opts=pulumi.InvokeOutputOptions(depends_on=[cluster]))
            self.node_join = info.apply(lambda c: ClusterFacts.of(c).node_join())
        if plan.node_monitoring_agent:
            # Reports GPU, Neuron, network and kernel faults as node conditions, which node auto repair acts on.
            aws.eks.Addon(
                f"{name}-node-monitoring-agent",
                aws.eks.AddonArgs(cluster_name=self.name, addon_name="eks-node-monitoring-agent", tags=tags),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster]),
            )
        vpc_cni = aws.eks.Addon(
            f"{name}-vpc-cni",
            aws.eks.AddonArgs(
                cluster_name=self.name, addon_name="vpc-cni", addon_version=cfg.vpc_cni_version,
                resolve_conflicts_on_create="OVERWRITE", resolve_conflicts_on_update="OVERWRITE", tags=tags,
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster]),
        )
        return cluster, vpc_cni

    def _device_plugins(self, name: str, plan: StackPlan, on_k8s: pulumi.ResourceOptions) -> None:
        """Each plugin goes to the nodes our labels name, and tolerates their taints. Helm merges maps into the
        chart's defaults (an empty map clears nothing) but replaces lists: so each chart's default node
        affinity is replaced by a term list of ours, not emptied (tests/scheduling.py checks the merge)."""
        tolerations = _tolerations(plan)
        _release(f"{name}-efa-device-plugin", EFA_PLUGIN, on_k8s, {
            "tolerations": tolerations,
            "nodeSelector": {EFA_LABEL: "true"},
            # The chart builds its affinity from these; its own list of instance types lags new ones.
            "supportedInstanceLabels": {"keys": [EFA_LABEL], "values": ["true"]},
        })
        kinds = {fp.itype.accelerator.kind for fp in plan.fleets if fp.itype.accelerator}
        if "gpu" in kinds:
            # The chart's default affinity wants node-feature-discovery or nvidia.com/gpu.present labels, which our nodes lack.
            _release(f"{name}-nvidia-device-plugin", NVIDIA_PLUGIN, on_k8s,
                     {"tolerations": tolerations, "affinity": _affinity(ACCELERATOR_LABEL, "gpu")})
        if "neuron" in kinds:
            # The chart's node problem detector needs IAM roles of its own: off, as AWS's guide installs it.
            # Its default affinity lists instance types (trn2.3xlarge and others missing): our label instead.
            _release(f"{name}-neuron-device-plugin", NEURON_PLUGIN, on_k8s, {
                "npd": {"enabled": False},
                "devicePlugin": {"tolerations": tolerations, "affinity": _affinity(ACCELERATOR_LABEL, "neuron")},
            })

    def _dra_drivers(self, name: str, plan: StackPlan, on_k8s: pulumi.ResourceOptions) -> None:
        """eks.devices: dra. The DRA drivers in place of the device plugins, cluster-wide, so that no node runs a
        driver and a plugin for the same device: each to the nodes our labels name, tolerating their taints
        (tests/scheduling.py merges these values into each chart's defaults)."""
        tolerations = _tolerations(plan)
        if any(fp.efa_devices for fp in plan.fleets):
            # Its default affinity lists instance types (a list that lags new ones): our label instead.
            _release(f"{name}-dranet", devices.driver("efa").chart, on_k8s, {
                "tolerations": tolerations,
                "supportedInstanceLabels": {"keys": [EFA_LABEL], "values": ["true"]},
            })
        kinds = {fp.itype.accelerator.kind for fp in plan.fleets if fp.itype.accelerator}
        if "gpu" in kinds:
            gpu = devices.driver("gpu")
            _release(f"{name}-nvidia-dra-driver", gpu.chart, on_k8s, {
                # The chart refuses GPU allocation unless told that no GPU device plugin runs beside it.
                "gpuResourcesEnabledOverride": True,
                # ComputeDomains are multi-node NVLink (IMEX) domains, which no fleet here has.
                "resources": {"computeDomains": {"enabled": False}},
                # Its default affinity wants node-feature-discovery or nvidia.com/gpu.present labels: ours instead.
                "kubeletPlugin": {"tolerations": tolerations, "affinity": _affinity(ACCELERATOR_LABEL, "gpu")},
            }, namespace=gpu.namespace)
        if "neuron" in kinds:
            _release(f"{name}-neuron-dra-driver", devices.driver("neuron").chart, on_k8s, {
                "npd": {"enabled": False},
                "devicePlugin": {"enabled": False},  # the chart refuses both at once
                "draDriver": {"enabled": True, "tolerations": tolerations, "affinity": _affinity(ACCELERATOR_LABEL, "neuron")},
            })

    def _data(self, name: str, plan: StackPlan, creates: bool, ready: list[pulumi.Resource], tags: dict[str, str],
              on_k8s: pulumi.ResourceOptions) -> None:
        """What jobs' data needs in a cluster the stack creates: the Pod Identity agent, kept whatever jobs are listed
        (like the operators: pods the stack does not know of may use it), and the FSx CSI driver where fleets have
        FSx. A joined cluster keeps its own (read_existing checks it has the agent; the README asks for the driver)."""
        if not creates:
            return
        self.base.append(eks_data.pod_identity_agent(name, self.name, tags, pulumi.ResourceOptions(parent=self, depends_on=ready)))
        if any(fp.config.fsx for fp in plan.fleets):
            _release(f"{name}-fsx-csi-driver", eks_data.csi_chart(), on_k8s, eks_data.csi_values(plan.config.region))

    def file_system_volume(self, fp: FleetPlan, file_system: aws.fsx.LustreFileSystem) -> None:
        """The fleet's file system as a static volume and claim in its namespace, which jobs mount."""
        f = fp.config.fsx
        eks_data.static_volume(fp.name, file_system, f.storage_gib, f.namespace,
                               pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=self.namespaces))

    @staticmethod
    def _operators(name: str, operators: list[str], on_k8s: pulumi.ResourceOptions) -> None:
        """Operators are a cluster setting, not a job's: removing one deletes its CRDs and every job of that kind."""
        if "trainer" in operators:
            trainer = k8s.kustomize.v2.Directory(f"{name}-trainer", k8s.kustomize.v2.DirectoryArgs(directory=TRAINER), opts=on_k8s)
            # The runtime our TrainJobs name, once its CRD exists.
            k8s.yaml.v2.ConfigGroup(f"{name}-trainer-runtime", k8s.yaml.v2.ConfigGroupArgs(objs=[trainjob.runtime()]),
                                    opts=pulumi.ResourceOptions.merge(on_k8s, pulumi.ResourceOptions(depends_on=[trainer])))
        if "training-operator" in operators:
            k8s.kustomize.v2.Directory(
                f"{name}-training-operator", k8s.kustomize.v2.DirectoryArgs(directory=TRAINING_OPERATOR), opts=on_k8s,
            )
        if "mpi-operator" in operators:
            k8s.yaml.v2.ConfigFile(f"{name}-mpi-operator", k8s.yaml.v2.ConfigFileArgs(file=MPI_OPERATOR), opts=on_k8s)

    def node_group(self, fp: FleetPlan, launch_template: aws.ec2.LaunchTemplate, subnet_id: pulumi.Input[str],
                   tags: dict[str, str], window: Schedule | None = None) -> aws.eks.NodeGroup:
        """A managed node group that launches from the fleet's EFA launch template; on a Capacity
        Block (`window`), scaled up by a scheduled action on its Auto Scaling group when the block starts."""
        f = fp.config
        low, desired = window_sizes(fp, window)
        group = aws.eks.NodeGroup(
            f"{f.name}-nodes",
            aws.eks.NodeGroupArgs(
                cluster_name=self.name,
                node_role_arn=self.node_role.arn,
                subnet_ids=[subnet_id],
                launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                    id=launch_template.id, version=launch_template.latest_version.apply(str),
                ),
                ami_type=ami_type(fp),
                # EKS takes no version beside a pinned AMI: the AMI's own release decides (CreateNodegroup, version).
                version=None if f.ami else self._node_group_version,
                capacity_type="CAPACITY_BLOCK" if f.capacity.type == "capacity-block" else None,
                scaling_config=aws.eks.NodeGroupScalingConfigArgs(min_size=low, desired_size=desired, max_size=f.nodes.maximum),
                # EKS replaces or reboots nodes whose health conditions (GPU, Neuron, network) fail.
                node_repair_config=aws.eks.NodeGroupNodeRepairConfigArgs(enabled=True) if fp.auto_repair else None,
                labels=fp.node_labels,
                taints=[aws.eks.NodeGroupTaintArgs(key=t["key"], value=t["value"], effect=eks_rules.TAINT_EFFECTS[t["effect"]])
                        for t in fp.node_taints],
                tags={**tags, FLEET_TAG: f.name},
            ),
            opts=self._node_deps,
        )
        if window is not None:
            # EKS adds the scale-down before the block ends itself ("don't edit or delete it").
            asg = group.resources.apply(lambda r: r[0].autoscaling_groups[0].name)
            block_schedules(f.name, fp, window, asg, pulumi.ResourceOptions(parent=self), scale_down=False)
        return group
