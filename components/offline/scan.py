"""What an IaC scanner reads of a stack, written to a directory: the offline plan
as Terraform plan JSON, every job's Kubernetes manifests, and the checkov config
with the project's skip list (`data/checkov-skips.yaml`, each check with its reason).

Scanners check the pod templates of the kinds Kubernetes defines, not those
inside an operator's resource (PyTorchJob, MPIJob, TrainJob): each replica's
template is also written as the Pod the operator makes of it (for a TrainJob,
the trainer's merge of its runtime and the job: trainer_model.py), so the same
rules see every container that runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..planning import config, launch
from ..planning.launch import trainjob
from . import mocks, terraform_plan, trainer_model

SKIPS = Path(__file__).resolve().parent.parent / "data" / "checkov-skips.yaml"
PLAN_FILE, MANIFESTS, CONFIG_FILE = "plan.tf.json", "manifests", "checkov.yaml"
# The operators' resources and where they keep their replicas' pod templates.
REPLICAS = {"PyTorchJob": "pytorchReplicaSpecs", "MPIJob": "mpiReplicaSpecs"}


def skips() -> dict[str, str]:
    """Check id -> why it is skipped."""
    return yaml.safe_load(SKIPS.read_text()) or {}


def operator_pods(doc: dict) -> list[dict]:
    """The Pods an operator creates from a job's replica templates (none for kinds Kubernetes defines)."""
    specs = doc.get("spec", {}).get(REPLICAS.get(doc.get("kind"), ""), {})
    if doc.get("kind") == "TrainJob":
        specs = {"node": {"template": trainer_model.node_pod(trainjob.runtime(), doc)}}
    meta = doc["metadata"]
    return [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {**replica["template"].get("metadata", {}), "name": f"{meta['name']}-{role.lower()}",
                          **({"namespace": meta["namespace"]} if "namespace" in meta else {})},
             "spec": replica["template"]["spec"]}
            for role, replica in specs.items()]


def checkov_config() -> dict:
    return {"framework": ["terraform_plan", "kubernetes"], "skip-check": sorted(skips()), "compact": True,
            "quiet": True, "skip-download": True}


def write_inputs(path: Path, stack: str, out: Path) -> list[Path]:
    """Write the scan inputs of the stack file `path` under `out`; returns the files written."""
    cfg = config.load_file(path)
    run = mocks.run(config.read_stack_file(path), stack)
    if run.error:
        raise config.ConfigError([config.Problem(str(path), run.error)], str(path))
    out.mkdir(parents=True, exist_ok=True)
    files = {out / PLAN_FILE: json.dumps(terraform_plan.export(run.resources, cfg.region, stack), indent=2),
             out / CONFIG_FILE: yaml.safe_dump(checkov_config(), sort_keys=False)}
    for job in cfg.jobs:
        if launch.job_plan(cfg, job).target != "eks":
            continue  # EC2 jobs are shell scripts in SSM documents: in the plan
        docs = launch.render_manifests(cfg, job)
        files[out / MANIFESTS / f"{job.name}.yaml"] = launch.manifests_yaml(docs)
        pods = [p for d in docs for p in operator_pods(d)]
        if pods:
            files[out / MANIFESTS / f"{job.name}.operator-pods.yaml"] = launch.manifests_yaml(pods)
    for file, text in files.items():
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text + ("" if text.endswith("\n") else "\n"))
    return list(files)
