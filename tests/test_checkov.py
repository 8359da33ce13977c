"""checkov, the common IaC scanner, over what every example stack would create: its Terraform-plan export
and its jobs' manifests (python -m components scan-inputs). A check may fail only if components/data/checkov-skips.yaml
lists it with its reason, and every listed check must still fail somewhere (else the entry goes)."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict

import pytest

from components.offline import scan
from tests.conftest import ROOT

CHECKOV = ROOT / "venv-checkov" / "bin" / "checkov"
STACKS = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))


@pytest.fixture(scope="module")
def findings(tmp_path_factory) -> dict[str, dict[str, list[str]]]:
    """stack -> 'passed' / 'failed' -> 'CHECK_ID resource' lines, from one checkov run without the skip list."""
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: create it with the README's test command (command 2), "
                    "which installs requirements-checkov.txt into venv-checkov")
    out = tmp_path_factory.mktemp("scan")
    for stack in STACKS:
        scan.write_inputs(ROOT / "stacks" / f"Pulumi.{stack}.yaml", stack, out / stack)
    run = subprocess.run([str(CHECKOV), "-d", str(out), "--framework", "terraform_plan", "kubernetes", "--compact",
                          "--skip-download", "-o", "json"], capture_output=True, text=True, timeout=600)
    assert run.stdout.strip(), run.stderr[-2000:]
    reports = json.loads(run.stdout)
    by_stack: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"passed": [], "failed": []})
    for report in reports if isinstance(reports, list) else [reports]:
        assert report["summary"]["parsing_errors"] == 0, report["check_type"]
        for verdict in ("passed", "failed"):
            for check in report["results"].get(f"{verdict}_checks", []):
                stack = check["file_path"].strip("/").split("/")[0]
                by_stack[stack][verdict].append(f"{check['check_id']} {check['file_path']} {check['resource']}")
    return by_stack


@pytest.mark.parametrize("stack", STACKS)
def test_no_unskipped_checkov_failure(findings, stack):
    skipped = set(scan.skips())
    unexpected = [f for f in findings[stack]["failed"] if f.split()[0] not in skipped]
    assert not unexpected, "\n".join(unexpected)


def test_every_stack_was_scanned(findings):
    """The scan saw each stack's resources (a stack with neither AWS resources nor EKS jobs has nothing to scan)."""
    assert {s for s in STACKS if findings[s]["passed"]} == set(STACKS)
    assert any("pretrain-master" in f for f in findings["prod"]["passed"])  # operator pods are scanned too


def test_the_skip_list_is_short_reasoned_and_still_needed(findings):
    skips = scan.skips()
    assert 0 < len(skips) <= 12  # CKV_AWS_339 goes once the locked checkov knows EKS 1.36 (the last assert says when)
    for check, reason in skips.items():
        assert isinstance(reason, str) and len(reason) > 40 and "\n" not in reason.strip(), check
    failing = {f.split()[0] for s in findings.values() for f in s["failed"]}
    assert set(skips) <= failing, f"no longer failing anywhere, drop from components/data/checkov-skips.yaml: {sorted(set(skips) - failing)}"


def test_the_checkov_config_carries_the_skip_list(tmp_path):
    files = scan.write_inputs(ROOT / "stacks" / "Pulumi.prod.yaml", "prod", tmp_path)
    cfg = (tmp_path / scan.CONFIG_FILE).read_text()
    assert all(check in cfg for check in scan.skips())
    assert {f.name for f in files} >= {scan.PLAN_FILE, scan.CONFIG_FILE, "pretrain.yaml", "pretrain.operator-pods.yaml",
                                       "pretrain-v2.operator-pods.yaml"}


def test_operator_pods_are_the_replicas_templates():
    doc = {"kind": "MPIJob", "metadata": {"name": "n", "namespace": "ml"}, "spec": {"mpiReplicaSpecs": {
        "Launcher": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "l"}]}}},
        "Worker": {"template": {"spec": {"containers": [{"name": "w"}]}}}}}}
    pods = scan.operator_pods(doc)
    assert [(p["kind"], p["metadata"]["name"], p["metadata"]["namespace"]) for p in pods] == [
        ("Pod", "n-launcher", "ml"), ("Pod", "n-worker", "ml")]
    assert pods[0]["metadata"]["labels"] == {"a": "b"} and pods[1]["spec"]["containers"][0]["name"] == "w"
    assert scan.operator_pods({"kind": "Job", "metadata": {"name": "j"}, "spec": {}}) == []


def test_the_pipelines_run_the_same_scan():
    import yaml

    job = yaml.safe_load((ROOT / ".github" / "workflows" / "infra.yml").read_text())["jobs"]["check"]
    workflow = "\n".join(s.get("run", "") for s in job["steps"])
    script = (ROOT / "scripts" / "pipeline.sh").read_text()
    for text in (workflow, script):
        for command in ("venv-checkov/bin/pip install -r requirements-checkov.txt", "-m components scan-inputs --config",
                        "venv-checkov/bin/checkov --config-file"):
            assert command in text, command


def test_ci_runs_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m venv"))
    assert f"\n{command}\n" in readme and "requirements-checkov.txt" in command
