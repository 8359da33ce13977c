"""Job: a training job's launch artifacts as stack resources and outputs.

On plain EC2 fleets the per-node launch script becomes an SSM Command
document, which a pipeline runs on every node of the fleet with
`aws ssm send-command` (the `run` output), which writes every node's output
into the fleet's log group (`logGroup`). On EKS the manifests are exported as a stack output,
and applied when the job says so.
"""

from __future__ import annotations

import json

import pulumi

from ..planning import data_access, launch
from ..planning.config import JobConfig, StackConfig


class Job(pulumi.ComponentResource):
    # self.outputs: the job's stack outputs. Not a class annotation: the annotated attributes are the component
    # package's outputs (resources/hosted.py), each typed.

    def __init__(self, job: JobConfig, cfg: StackConfig, stack: str, k8s_provider=None,
                 tags: dict[str, str] | None = None, namespaces: list[pulumi.Resource] | None = None,
                 run_log_group: pulumi.Input[str] | None = None, cluster_name: pulumi.Input[str] | None = None,
                 cluster_ready: list[pulumi.Resource] | None = None, opts: pulumi.ResourceOptions | None = None):
        """`namespaces`: what applied manifests wait for (the namespaces the stack creates). `run_log_group` (plain
        EC2): the fleet's log group, where the launch's output goes. `cluster_name`: the EKS cluster of the job's
        fleet, where its pods get the job's data role, once `cluster_ready` exist."""
        super().__init__("efa-infra:index:Job", job.name, None, opts)
        plan = launch.job_plan(cfg, job)
        if plan.service_account:
            from .data_access import pod_identity  # pulumi-aws, loaded only where a job has a data role

            pod_identity(job.name, cluster_name, plan.namespace, plan.service_account, data_access.job_policy(cfg, job),
                         tags or {}, pulumi.ResourceOptions(parent=self, depends_on=cluster_ready or []))
        if plan.target == "ec2":
            import pulumi_aws as aws  # loaded only where a job creates AWS resources (not for a cluster's jobs)

            document = aws.ssm.Document(
                f"{job.name}-launch",
                aws.ssm.DocumentArgs(
                    document_type="Command",
                    document_format="JSON",
                    content=json.dumps(launch.ssm_document(launch.render_node_script(cfg, job, stack=stack), job.name,
                                                          job.working_directory)),
                    tags=tags,
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            if run_log_group is None:
                raise ValueError(f"job {job.name!r}: a launch on plain EC2 needs its fleet's log group")
            self.outputs = {
                "ssmDocument": document.name,
                "run": pulumi.Output.all(document.name, run_log_group).apply(lambda a: launch.send_command_line(
                    launch.send_command_request(a[0], job.name, plan.fleet, stack, a[1]), cfg.region)),
                "logGroup": run_log_group,
            }
        else:
            manifests = launch.render_manifests(cfg, job)
            if job.apply:
                import pulumi_kubernetes as k8s

                k8s.yaml.v2.ConfigGroup(
                    f"{job.name}-manifests", k8s.yaml.v2.ConfigGroupArgs(objs=manifests),
                    opts=pulumi.ResourceOptions(parent=self, provider=k8s_provider, depends_on=namespaces or []),
                )
            self.outputs = {"manifests": manifests}
        self.register_outputs(self.outputs)
