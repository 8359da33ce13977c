"""A torchrun or accelerate job as a Kubeflow Trainer v2 TrainJob, and the ClusterTrainingRuntime it runs on.

Trainer v2 (pinned: v2.3.x, `TRAINER_VERSION`) builds a JobSet from a runtime and the TrainJob
(kubeflow/trainer@v2.3.0, pkg/runtime/core/trainingruntime.go and plugins/jobset, plugins/torch):
- `spec.runtimePatches[].trainingRuntimeSpec.template.spec` is a strategic merge patch onto the runtime's
  JobSet spec; its pod patch takes labels, nodeSelector, affinity, tolerations, volumes, the pod's and the
  containers' securityContext and volumeMounts, but no env for the `node` container and no
  automountServiceAccountToken, restartPolicy, imagePullPolicy or workingDir: those are the runtime's
  (`runtime()` below), or the command's;
- `spec.trainer` sets the `node` container's image, command and env, and `resourcesPerNode` merges into
  its resources key by key; `numNodes` is the node Job's parallelism;
- the torch plugin adds PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (the Job completion index),
  PET_MASTER_ADDR (<name>-node-0-0.<name>) and PET_MASTER_PORT (always 29500), and that container port; the config
  refuses a job that sets them or another port (config/checks.py).

The pod is built by the same function as the PyTorchJob's (`kubernetes._node_pod`) and split into
those fields, so it carries the same requests, preflight, transport check, affinity and security context.
"""

from __future__ import annotations

import shlex

from ..config import JobConfig
from . import shell
from .job_plan import JobPlan
from .kubernetes import _labels, _meta, _node_pod, _pod_script

TRAINER_VERSION = "v2.3.0"  # the overlay in components/manifests/trainer pins the same tag
API_VERSION = "trainer.kubeflow.org/v1alpha1"
RUNTIME = "efa-torch-distributed"
CONTAINER = "node"  # the trainer's container and replicated Job name (constants.Node)
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
# A patch's manager must be a domain-prefixed path (plugins/jobset/jobset.go, Validate).
PATCH_MANAGER = "efa-infra/launch"
# The image only a TrainJob without one would run: each of ours names its own. Upstream's torch-distributed names it.
RUNTIME_IMAGE = "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime"


def runtime() -> dict:
    """Our ClusterTrainingRuntime: one replicated Job of trainer nodes, holding what a TrainJob cannot patch."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterTrainingRuntime",
        "metadata": {
            "name": RUNTIME,
            "labels": {
                "trainer.kubeflow.org/framework": "torch",
                # As upstream's own runtimes: validated ahead of time (our tests, against the pinned CRD), so that
                # creating it does not wait on the trainer's webhook, installed with it.
                "trainer.kubeflow.org/webhook-validation": "disabled",
            },
        },
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {"spec": {"replicatedJobs": [{
                "name": CONTAINER,
                "template": {
                    "metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
                    "spec": {
                        "backoffLimit": 0,  # a restarted rank cannot rejoin a formed rendezvous: fail the job
                        "template": {"spec": {
                            "restartPolicy": "Never",
                            "automountServiceAccountToken": False,  # nothing in the pod calls the API
                            # A tag is checked against the registry at each start, so every node runs what it names now.
                            "containers": [{"name": CONTAINER, "image": RUNTIME_IMAGE, "imagePullPolicy": "Always"}],
                        }},
                    },
                },
            }]}},
        },
    }


def render(plan: JobPlan, job: JobConfig) -> dict:
    """The TrainJob of a torchrun or accelerate job."""
    body = shell.run_line(plan, shell.launch_line(plan, '"$PET_NODE_RANK"', '"$PET_MASTER_ADDR"', '"$PET_MASTER_PORT"'))
    if plan.working_directory:  # no workingDir in a TrainJob's container patch
        body = f"cd {shlex.quote(plan.working_directory)} || exit 1\n{body}"
    pod = _node_pod(plan, job, CONTAINER, _pod_script(plan, body))
    spec, (container,) = pod["spec"], pod["spec"]["containers"]
    trainer: dict = {"image": container["image"], "command": container["command"], "numNodes": plan.nodes,
                     "numProcPerNode": plan.procs_per_node, "resourcesPerNode": container["resources"]}
    if container.get("env"):
        trainer["env"] = container["env"]
    pod_patch = {k: spec[k] for k in ("nodeSelector", "tolerations", "affinity", "volumes", "securityContext", "serviceAccountName") if k in spec}
    pod_patch["containers"] = [{"name": CONTAINER, "volumeMounts": container["volumeMounts"],
                                "securityContext": container["securityContext"]}]
    patch = {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
        "name": CONTAINER,
        "template": {"spec": {"template": {"metadata": {"labels": _labels(plan, "node")}, "spec": pod_patch}}},
    }]}}}}
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainJob",
        "metadata": _meta(plan),
        "spec": {"runtimeRef": {"name": RUNTIME, "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
                 "trainer": trainer, "runtimePatches": [patch]},
    }
