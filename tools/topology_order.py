"""Benchmark: ring neighbours that cross a network node, before and after the EC2 launch script orders
its hosts by DescribeInstanceTopology.

Each trial places the nodes of a fleet at random under a network tree (AWS's layers: layer 1 at the
top, the last layer the one instances connect to), gives them addresses in random order, and runs the
launch script's own `order_by_topology` (bash) against a stand-in `aws` that answers
DescribeInstances and DescribeInstanceTopology from that tree, in the API's shape. A ring over the
ranks (NCCL's ring all-reduce) has the pairs (r, r+1) and (n-1, 0); a pair crosses layer L when its two
nodes sit under different layer-L network nodes.

The minimum: with k >= 2 distinct layer-L nodes among the job's nodes, each one's nodes form at least
one run of consecutive ranks around the ring, and a run ends where the ring crosses to another node:
at least k crossings; 0 when k = 1. Sorting by the full list of network nodes makes one run per node
at every layer at once (a lower node's run lies inside its parent's), so it reaches k at every layer.

    python tools/topology_order.py [--trials 20] [--seed 7]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.planning.launch.ec2 import ORDER_BY_TOPOLOGY  # noqa: E402

# The stand-in `aws`: answers from world.json, in the API's response shape (checked against botocore's
# EC2 model, as are the requests), with the caller's --query applied by jmespath and printed as the
# CLI's --output text prints a list of rows (tab-separated). Every call is noted in calls.jsonl.
STAND_IN_AWS = r'''
import json, pathlib, sys
import botocore.session, botocore.validate, jmespath
here = pathlib.Path(__file__).resolve().parent
args = sys.argv[1:]
with open(here / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\n")
world = json.loads((here / "world.json").read_text())
if world.get("fail"):
    sys.exit("An error occurred (UnauthorizedOperation) when calling the " + world["fail"] + " operation")
ec2 = botocore.session.get_session().get_service_model("ec2")

def values(name):
    i = args.index(name) + 1
    out = []
    while i < len(args) and not args[i].startswith("--"):
        out.append(args[i]); i += 1
    return out

def answer(operation, request, response):
    op = ec2.operation_model(operation)
    for shape, params in ((op.input_shape, request), (op.output_shape, response)):
        report = botocore.validate.ParamValidator().validate(params, shape)
        if report.has_errors():
            sys.exit(f"stand-in aws: {operation}: " + report.generate_report())
    rows = jmespath.search(values("--query")[0], response) or []
    print("\n".join("\t".join("" if v is None else str(v) for v in row) for row in rows))

instances = world["instances"]  # ip -> {"id", "type", "nodes"}
if args[:2] == ["ec2", "describe-instances"]:
    answer("DescribeInstances", {"Filters": [{"Name": f.split(",")[0].removeprefix("Name="), "Values": [f.split("Values=")[1]]}
                                            for f in values("--filters")]},
           {"Reservations": [{"Instances": [{"InstanceId": i["id"], "PrivateIpAddress": ip} for ip, i in reversed(instances.items())]}]})
elif args[:2] == ["ec2", "describe-instance-topology"]:
    asked = values("--instance-ids")
    if len(asked) > 100:
        sys.exit("An error occurred (InvalidParameterValue): at most 100 instance IDs")
    by_id = {i["id"]: i for i in instances.values()}
    answer("DescribeInstanceTopology", {"InstanceIds": asked},
           {"Instances": [{"InstanceId": x, "InstanceType": by_id[x]["type"], "NetworkNodes": by_id[x]["nodes"],
                           "AvailabilityZone": "us-east-1a", "ZoneId": "use1-az4"} for x in asked if x in by_id]})
else:
    sys.exit(f"stand-in aws: no answer for {args}")
'''


def stand_in(directory: Path, instances: dict[str, dict], fail: str | None = None) -> Path:
    """A bin/ directory with the stand-in `aws` answering for `instances` (ip -> id, type, nodes)."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "world.json").write_text(json.dumps({"instances": instances, "fail": fail}))
    aws = bin_dir / "aws"
    aws.write_text(f"#!{sys.executable}\n{STAND_IN_AWS}")
    aws.chmod(0o755)
    return bin_dir


@dataclass
class Ordered:
    ips: list[str]
    log: str
    calls: list[list[str]]


def order(ips: list[str], bin_dir: Path | None) -> Ordered:
    """Runs the launch script's order_by_topology on `ips` (already in address order), with the stand-in
    `aws` on PATH when `bin_dir` is given; returns the order it leaves and what it logged."""
    q = " ".join(f"'{ip}'" for ip in ips)
    script = "\n".join([
        "set -euo pipefail",
        "log() { printf 'efa-infra[%s]: %s\\n' \"$JOB\" \"$*\" >&2; }",
        "JOB=bench FLEET=gpu FLEET_TAG=efa-infra:fleet STACK_TAG=efa-infra:stack REGION=us-east-1 EFA_INFRA_STACK=dev",
        f"ALL_IPS=({q})",
        ORDER_BY_TOPOLOGY,
        "order_by_topology",
        'printf "%s\\n" "${ALL_IPS[@]}"',
    ])
    path = "/usr/bin:/bin" if bin_dir is None else f"{bin_dir}:/usr/bin:/bin"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, env={"PATH": path})
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    calls_file = bin_dir / "calls.jsonl" if bin_dir else None
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()] if calls_file and calls_file.exists() else []
    return Ordered(done.stdout.split(), done.stderr, calls)


def address_order(ips: list[str]) -> list[str]:
    return sorted(ips, key=ipaddress.IPv4Address)


def crossings(ring: list[str], nodes_of: dict[str, list[str]], layer: int) -> int:
    """Ring-neighbour pairs whose nodes sit under different network nodes of `layer` (1 = top)."""
    n = len(ring)
    if n < 2:
        return 0
    pairs = [(ring[i], ring[(i + 1) % n]) for i in range(n)] if n > 2 else [(ring[0], ring[1])]
    return sum(nodes_of[a][layer - 1] != nodes_of[b][layer - 1] for a, b in pairs)


def minimum(ring: list[str], nodes_of: dict[str, list[str]], layer: int) -> int:
    """The fewest crossings any order allows (see the module's docstring)."""
    k = len({nodes_of[ip][layer - 1] for ip in ring})
    if k < 2:
        return 0
    return k if len(ring) > 2 else 1


@dataclass(frozen=True)
class Scenario:
    name: str
    instance_type: str
    nodes: int
    fanout: tuple[int, ...]  # network nodes under each node of the layer above, top layer first


SCENARIOS = [
    Scenario("64 x p5.48xlarge, 4 layer-3 nodes", "p5.48xlarge", 64, (1, 2, 2)),
    Scenario("64 x p5.48xlarge, 8 layer-3 nodes", "p5.48xlarge", 64, (1, 2, 4)),
    Scenario("16 x p5en.48xlarge, 2 layer-3 nodes", "p5en.48xlarge", 16, (1, 1, 2)),
    Scenario("32 x p6-b200.48xlarge, 4 layers, 4 layer-4 nodes", "p6-b200.48xlarge", 32, (1, 1, 2, 2)),
]


def place(s: Scenario, rng: random.Random) -> dict[str, dict]:
    """Random placement of the scenario's nodes under its tree, and addresses in random order."""
    paths: list[list[str]] = [[]]
    for fan in s.fanout:
        paths = [p + [f"nn-{rng.randrange(16**17):017x}"] for p in paths for _ in range(fan)]
    ips = [str(ipaddress.IPv4Address("10.1.0.0") + a) for a in rng.sample(range(4, 4000), s.nodes)]
    return {ip: {"id": f"i-{rng.randrange(16**17):017x}", "type": s.instance_type, "nodes": rng.choice(paths)} for ip in ips}


def trial(s: Scenario, rng: random.Random, workdir: Path) -> dict[int, tuple[int, int, int]]:
    """Per layer (below the top): crossings in address order, after ordering, and the minimum."""
    instances = place(s, rng)
    before = address_order(list(instances))
    after = order(before, stand_in(workdir, instances)).ips
    nodes_of = {ip: i["nodes"] for ip, i in instances.items()}
    return {layer: (crossings(before, nodes_of, layer), crossings(after, nodes_of, layer), minimum(after, nodes_of, layer))
            for layer in range(2, len(s.fanout) + 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"Ring-neighbour pairs crossing a network node, {args.trials} random placements each (seed {args.seed}):")
    print(f"{'scenario':<50} {'layer':>5} {'address order (mean, max)':>26} {'topology order (mean)':>22} {'minimum (mean)':>15} {'at minimum':>10}")
    for s in SCENARIOS:
        rows: dict[int, list[tuple[int, int, int]]] = {}
        for _ in range(args.trials):
            with tempfile.TemporaryDirectory() as tmp:
                for layer, figures in trial(s, rng, Path(tmp)).items():
                    rows.setdefault(layer, []).append(figures)
        for layer, figs in rows.items():
            before, after, least = zip(*figs)
            hit = sum(a == m for _, a, m in figs)
            print(f"{s.name:<50} {layer:>5} {statistics.mean(before):>19.1f}, {max(before):>4} {statistics.mean(after):>22.2f} "
                  f"{statistics.mean(least):>15.2f} {hit:>6}/{len(figs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
