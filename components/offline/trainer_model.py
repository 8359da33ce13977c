"""What Kubeflow Trainer v2.3 builds from a TrainJob and its ClusterTrainingRuntime: the JobSet, and in it
the pod template of the trainer's node Job. The scan writes those pods for scanners (scan.py); the tests
check them as the PyTorchJob's. From kubeflow/trainer@v2.3.0 (commit 658725bd):

- webhook checks on `runtimePatches` (pkg/runtime/framework/plugins/jobset/jobset.go, Validate): the
  manager is a domain-prefixed path; a patched replicated Job and its containers exist in the runtime;
  no env for the `node` container (that goes in spec.trainer.env);
- each patch's `trainingRuntimeSpec.template.spec` is a strategic merge patch onto the runtime's JobSet
  spec (pkg/runtime/core/trainingruntime.go, mergeRuntimePatches; JobSet v0.12.0 merges replicatedJobs
  by name, and Kubernetes' core types merge containers, volumes and env by name, volumeMounts by
  mountPath, ports by containerPort; other lists, tolerations among them, replace; null deletes);
- `spec.trainer` (plugins/jobset/builder.go, Trainer): image, command and args replace the `node`
  container's, env is upserted by name; resourcesPerNode merges into its resources key by key
  (pkg/util/trainingruntime, MergeResourceRequirements); numNodes is the node Job's parallelism and
  completions (core/trainingruntime.go, newRuntimeInfo, and plugins/torch);
- the torch plugin (plugins/torch/torch.go, EnforceMLPolicy) upserts PET_NNODES, PET_NPROC_PER_NODE,
  PET_NODE_RANK (from the Job completion index), PET_MASTER_ADDR (<name>-node-0-0.<name>) and
  PET_MASTER_PORT (29500, pkg/constants), and container port 29500.
"""

from __future__ import annotations

import copy
import re

TRAINER_PORT = 29500
ANCESTOR = "trainer.kubeflow.org/trainjob-ancestor-step"
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
# patchMergeKey of the lists that merge (k8s.io/api core/v1 types.go; jobset v1alpha2 jobset_types.go).
MERGE_KEYS = {"replicatedJobs": "name", "containers": "name", "initContainers": "name", "volumes": "name",
              "env": "name", "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name",
              "resourceClaims": "name", "claims": "name"}
# k8s.io/apimachinery validation: IsDomainPrefixedPath is a DNS-1123 subdomain, '/', and a non-empty path.
_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"


class Refused(ValueError):
    """What the trainer's webhook refuses."""


def strategic_merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in MERGE_KEYS and isinstance(value, list) and isinstance(out.get(key), list):
                out[key] = _merge_list(out[key], value, MERGE_KEYS[key])
            elif key in out:
                out[key] = strategic_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    return copy.deepcopy(patch)


def _merge_list(base: list, patch: list, key: str) -> list:
    out = copy.deepcopy(base)
    for item in patch:
        at = next((i for i, b in enumerate(out) if b.get(key) == item.get(key)), None)
        if at is None:
            out.append(copy.deepcopy(item))
        else:
            out[at] = strategic_merge(out[at], item)
    return out


def _upsert_env(env: list, items: list) -> None:
    for item in items:
        at = next((i for i, e in enumerate(env) if e["name"] == item["name"]), None)
        if at is None:
            env.append(copy.deepcopy(item))
        else:
            env[at] = copy.deepcopy(item)


def _validate(runtime: dict, trainjob: dict) -> None:
    jobs = {r["name"]: r for r in runtime["spec"]["template"]["spec"]["replicatedJobs"]}
    for patch in trainjob["spec"].get("runtimePatches") or []:
        if not re.fullmatch(_SUBDOMAIN + r"/.+", patch.get("manager", "")):
            raise Refused(f"manager {patch.get('manager')!r} is not a domain-prefixed path")
        for rjob in (((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs") or []:
            if rjob["name"] not in jobs:
                raise Refused(f"replicated job {rjob['name']!r} is not in the runtime")
            names = {c["name"] for c in jobs[rjob["name"]]["template"]["spec"]["template"]["spec"].get("containers", [])}
            for c in (((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []:
                if c["name"] not in names:
                    raise Refused(f"container {c['name']!r} is not in the runtime's job {rjob['name']!r}")
                if c.get("env") and c["name"] == "node":
                    raise Refused("no envs for the node container in a runtime patch")


def jobset(runtime: dict, trainjob: dict) -> dict:
    """The JobSet the trainer creates for `trainjob` on `runtime`."""
    _validate(runtime, trainjob)
    spec = copy.deepcopy(runtime["spec"]["template"]["spec"])
    for patch in trainjob["spec"].get("runtimePatches") or []:
        body = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec")
        if body:
            spec = strategic_merge(spec, body)
    trainer = trainjob["spec"].get("trainer") or {}
    name = trainjob["metadata"]["name"]
    nodes = trainer.get("numNodes", runtime["spec"]["mlPolicy"].get("numNodes", 1))
    for rjob in spec["replicatedJobs"]:
        if rjob["template"].get("metadata", {}).get("labels", {}).get(ANCESTOR) != "trainer":
            continue
        rjob["replicas"] = 1
        rjob["template"]["spec"]["parallelism"] = rjob["template"]["spec"]["completions"] = nodes
        for c in rjob["template"]["spec"]["template"]["spec"]["containers"]:
            if c["name"] != "node":
                continue
            for key in ("image", "command", "args"):
                if key in trainer:
                    c[key] = copy.deepcopy(trainer[key])
            env = c.setdefault("env", [])
            _upsert_env(env, trainer.get("env") or [])
            if "resourcesPerNode" in trainer:
                c["resources"] = strategic_merge(c.get("resources") or {}, trainer["resourcesPerNode"])
            _upsert_env(env, [
                {"name": "PET_NNODES", "value": str(nodes)},
                {"name": "PET_NPROC_PER_NODE", "value": str(trainer.get("numProcPerNode", "auto"))},
                {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
                {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"},
                {"name": "PET_MASTER_PORT", "value": str(TRAINER_PORT)},
            ])
            if not any(p.get("containerPort") == TRAINER_PORT for p in c.get("ports") or []):
                c.setdefault("ports", []).append({"containerPort": TRAINER_PORT})
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
            "metadata": {"name": name, "namespace": trainjob["metadata"].get("namespace", "default")}, "spec": spec}


def node_pod(runtime: dict, trainjob: dict) -> dict:
    """The pod template of the trainer's node Job."""
    (rjob,) = [r for r in jobset(runtime, trainjob)["spec"]["replicatedJobs"]
               if r["template"].get("metadata", {}).get("labels", {}).get(ANCESTOR) == "trainer"]
    return rjob["template"]["spec"]["template"]
