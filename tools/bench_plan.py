"""Benchmark: the offline plan's time against its floor, on every example stack, side by side.

The floor is a process that loads every resource class the plan registers (and
its Args: pulumi_aws loads a service package, such as ec2, on first use), and
exits. Plan and floor runs alternate, round after round, so that both see the
same load on a shared machine; each process's CPU time (user + system) is taken
besides its wall time, being the steadier of the two while other work runs. The
machine's load average is printed before and after. Goal: plan / floor at or
below 1.3 on every stack.

    python tools/bench_plan.py [--stack dev --stack prod] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL = 1.3


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one run of `cmd`."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


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


def load() -> str:
    """The machine's load average over 1, 5 and 15 minutes, as `uptime` prints it."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", action="append", metavar="NAME", help="a stack to measure (default: every example stack)")
    parser.add_argument("--runs", type=int, default=5, help="rounds of plan and floor runs per stack (default 5)")
    args = parser.parse_args()
    py = sys.executable
    stacks = args.stack or sorted(p.name[len("Pulumi."):-len(".yaml")] for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))
    commands = {}
    for stack in stacks:
        doc = json.loads(subprocess.run([py, "-m", "components", "plan", "--stack", stack, "--json"],
                                        cwd=ROOT, check=True, capture_output=True, text=True).stdout)
        types = {r["type"] for r in doc["resources"] if not r["type"].startswith("efa-infra:")}
        commands[stack] = ([py, "-m", "components", "plan", "--stack", stack], [py, "-c", floor_program(types)],
                           len(doc["resources"]), len(types))
    print(f"load average (1, 5, 15 min) before: {load()}")
    times: dict[str, dict[str, list[tuple[float, float]]]] = {s: {"plan": [], "floor": []} for s in stacks}
    for round_ in range(args.runs):
        for stack in stacks:
            plan, floor = commands[stack][:2]
            order = [("plan", plan), ("floor", floor)] if round_ % 2 == 0 else [("floor", floor), ("plan", plan)]
            for what, cmd in order:
                times[stack][what].append(timed(cmd))
    print(f"load average (1, 5, 15 min) after:  {load()}")
    print(f"median of {args.runs} alternating rounds; floor: a process loading the plan's resource classes and their Args")
    print(f"{'stack':<20} {'resources':>9}  {'plan wall':>9} {'floor wall':>10} {'ratio':>6}  {'plan cpu':>8} {'floor cpu':>9} {'ratio':>6}")
    worst = 0.0
    for stack in stacks:
        plan, floor = times[stack]["plan"], times[stack]["floor"]
        pw, fw = statistics.median(t[0] for t in plan), statistics.median(t[0] for t in floor)
        pc, fc = statistics.median(t[1] for t in plan), statistics.median(t[1] for t in floor)
        worst = max(worst, pc / fc)
        print(f"{stack:<20} {commands[stack][2]:>9}  {pw:>8.2f}s {fw:>9.2f}s {pw / fw:>5.2f}x  {pc:>7.2f}s {fc:>8.2f}s {pc / fc:>5.2f}x")
    print(f"worst CPU ratio {worst:.2f}x (goal: at most {GOAL}x)")


if __name__ == "__main__":
    main()
