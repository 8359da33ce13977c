"""Benchmark: the offline plan's wall time against its floor on this machine.

The floor is a bare process that imports the same SDK modules the plan's
resources use (pulumi_aws loads a service package, such as ec2, on first use).
Prints median wall times over several runs and the ratio; the aim is under 1.5x.

    python tools/bench_plan.py [--stack dev] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def floor_program(resource_types: set[str]) -> str:
    """A program that only loads what the plan's resources need: each resource
    class and its Args (pulumi_aws loads service packages and their input
    types lazily, on first use), e.g. aws:ec2/vpc:Vpc -> pulumi_aws.ec2.Vpc."""
    sdks = {"aws": "pulumi_aws", "eks": "pulumi_eks", "kubernetes": "pulumi_kubernetes"}
    lines = ["import pulumi"]
    for typ in sorted(resource_types):
        pkg, module, cls = typ.split(":")
        if pkg == "pulumi":  # pulumi:providers:kubernetes -> pulumi_kubernetes.Provider
            path, cls = sdks[cls], "Provider"
        else:
            # kubernetes:helm.sh/v3:Release -> pulumi_kubernetes.helm.v3; aws:ec2/vpc:Vpc -> pulumi_aws.ec2
            parts = [p.split(".")[0] for p in module.split("/")] if pkg == "kubernetes" else [module.split("/")[0]]
            path = sdks[pkg] if parts == ["index"] else ".".join([sdks[pkg], *parts])
        lines.append(f"import {path}; {path}.{cls}; {path}.{cls}Args")
    lines.append("import os; os._exit(0)  # the CLI skips interpreter teardown too")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    py = sys.executable
    doc = json.loads(subprocess.run([py, "-m", "components", "plan", "--stack", args.stack, "--json"],
                                    cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    types = {r["type"] for r in doc["resources"] if not r["type"].startswith("efa-infra:")}
    plan_s = wall([py, "-m", "components", "plan", "--stack", args.stack], args.runs)
    floor_s = wall([py, "-c", floor_program(types)], args.runs)
    bare_s = wall([py, "-c", "import pulumi_aws, pulumi_eks"], args.runs)
    print(f"stack {args.stack}: {len(doc['resources'])} resources, median of {args.runs} runs")
    print(f"offline plan            {plan_s:6.2f} s")
    print(f"floor: load the {len(types)} resource classes and their Args")
    print(f"                        {floor_s:6.2f} s")
    print(f"ratio plan / floor      {plan_s / floor_s:6.2f}x   (aim: under 1.5x)")
    print(f"bare import pulumi_aws, pulumi_eks   {bare_s:6.2f} s")


if __name__ == "__main__":
    main()
