"""The offline CLI: `python -m components COMMAND`.

    plan          what `pulumi up` would build for a stack, run under Pulumi's mocks
    render        write every job's launch artifacts (manifests, node scripts)
    scan-inputs   write what an IaC scanner (checkov) reads of a stack, with its config
    diff          what a change to a stack file creates, updates, replaces and deletes
    validate      check stack configs; exit 1 naming each problem by stack and key
    types         the EFA-capable instance types and their layouts
    nccl-report   compare nccl-tests logs (EFA against TCP)

No command needs AWS credentials or the Pulumi CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from .planning.project import stacks_dir

ROOT = Path(__file__).resolve().parent.parent
STACKS = stacks_dir()  # the stacks of the project the command runs in, not of an installed copy


def stack_file(args: argparse.Namespace) -> tuple[Path, str]:
    if args.config:
        path = Path(args.config)
        name = path.name.removeprefix("Pulumi.").removesuffix(".yaml") if path.name.startswith("Pulumi.") else path.stem
        return path, name
    return STACKS / f"Pulumi.{args.stack}.yaml", args.stack


def cmd_plan(args: argparse.Namespace) -> int:
    from .planning import config, launch, plan
    from .offline import report

    path, name = stack_file(args)
    cfg = config.load_file(path)  # a clean error before Pulumi is even imported
    settings = config.read_stack_file(path)

    from .offline import mocks  # imports Pulumi and the AWS SDK modules the program uses

    run = mocks.run(settings, name)
    if run.error:
        print(f"error: {run.error}", file=sys.stderr)
        return 1
    if args.format == "terraform-plan":
        from .offline import terraform_plan

        print(json.dumps(terraform_plan.export(run.resources, cfg.region, name), indent=2))
        return 0
    clusters = {c.name for c in cfg.clusters}
    jobs = [report.job_facts(launch.job_plan(cfg, j), j.fleet in clusters, j.s3) for j in cfg.jobs]
    doc = report.plan_document(plan.build(cfg), name, run.resources, jobs, run.outputs.get("capacityWindows"),
                               run.outputs.get("capacityReservations"))
    print(json.dumps(doc, indent=2) if args.json or args.format == "json" else report.render_text(doc))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from .planning import config, launch

    path, name = stack_file(args)
    cfg = config.load_file(path)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for job in cfg.jobs:
        jp = launch.job_plan(cfg, job)
        if jp.target == "eks":
            files = {f"{job.name}.yaml": launch.manifests_yaml(launch.render_manifests(cfg, job))}
        else:
            script = launch.render_node_script(cfg, job, stack=name)
            files = {f"{job.name}.sh": script,
                     f"{job.name}.ssm.json": json.dumps(launch.ssm_document(script, job.name), indent=2) + "\n"}
        for filename, text in files.items():
            (out / filename).write_text(text)
            print(out / filename)
    if not cfg.jobs:
        print(f"stack {name} has no jobs")
    return 0


def cmd_scan_inputs(args: argparse.Namespace) -> int:
    from .offline import scan

    path, name = stack_file(args)
    for file in scan.write_inputs(path, name, Path(args.out)):
        print(file)
    return 0


def committed_resources(ref: str, rel: Path, name: str) -> tuple[list | None, str]:
    """What the repository at `ref` registers for its copy of the stack file `rel`: that commit's program
    on that commit's file, run offline in a copy of the tree (None: the file did not exist there)."""
    import tempfile

    from .planning import config
    from .offline import diff

    source = f"{rel.as_posix()} at {ref}"
    known = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], capture_output=True, text=True)
    if known.returncode != 0:
        raise config.ConfigError([config.Problem("--base-ref", f"{ref!r} is not a commit of this repository")], source)
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", ref, rel.as_posix()], capture_output=True, text=True)
    if not listed.stdout.strip():
        return None, f"{source} (not there: every resource is new)"
    with tempfile.TemporaryDirectory(prefix="efa-infra-base-") as tree:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
        planned = subprocess.run([sys.executable, "-m", "components", "plan", "--config", rel.as_posix(), "--json"],
                                 cwd=tree, capture_output=True, text=True)
    if planned.returncode != 0:
        raise config.ConfigError([config.Problem(source, planned.stderr.strip().removeprefix("error: "))], source)
    # Paths the program passes as inputs (a kustomize directory) name the copy: they are the repository's.
    doc = json.loads(planned.stdout.replace(json.dumps(tree)[1:-1], json.dumps(str(ROOT))[1:-1]))
    return [diff.Resource(r["type"], r["name"], r["urn"], r["inputs"]) for r in doc["resources"]], source


def cmd_diff(args: argparse.Namespace) -> int:
    from .planning import config
    from .offline import diff

    path, name = stack_file(args)
    after = config.read_stack_file(path)
    config.load(config.document_from_settings(after), str(path))  # clean errors before Pulumi is imported
    if args.base:
        before = config.read_stack_file(args.base)
        config.load(config.document_from_settings(before), args.base)
    else:
        try:
            rel = path.resolve().relative_to(ROOT)
        except ValueError:
            raise config.ConfigError([config.Problem(str(path), "--base-ref needs a stack file inside the repository; "
                                                     "give the committed one with --base FILE")], str(path)) from None
        base_resources, base = committed_resources(args.base_ref, rel, name)

    from .offline import mocks

    runs = []
    for settings in ([before] if args.base else []) + [after]:
        run = mocks.run(settings, name)
        if run.error:
            print(f"error: {run.error}", file=sys.stderr)
            return 1
        runs.append(run.resources)
    if args.base:
        base = args.base
    else:
        runs.insert(0, base_resources or [])
    changes = diff.compare(*runs)
    unchanged = len({r.urn for r in runs[1]} & {r.urn for r in runs[0]}) - sum(c.action in ("update", "replace") for c in changes)
    stopped = [] if args.allow_replace else diff.blocked(changes)
    refused, notes = diff.eks_refusals(runs[0], runs[1]), diff.eks_notes(runs[0], runs[1], changes)
    if args.json:
        print(json.dumps({"stack": name, "base": base, "changed": str(path), "summary": diff.summary(changes, unchanged),
                          "changes": [c.as_dict() for c in changes], "blocked": [c.as_dict() for c in stopped],
                          "refusedByEks": refused, "notes": notes}, indent=2))
    else:
        print(diff.render_text(changes, unchanged, f"diff of stack {name}: {base} -> {path} (offline, no AWS call)"))
        for note in notes:
            print(f"note: {note}")
    for problem in refused:
        print(f"error: EKS refuses this change: {problem}", file=sys.stderr)
    if refused:
        return 2
    if stopped:
        names = ", ".join(f"{c.protected} {c.name} ({c.action})" for c in stopped)
        print(f"error: {len(stopped)} protected resource{'s' * (len(stopped) != 1)} would be replaced or deleted: {names}. "
              "Rerun with --allow-replace if that is what you mean.", file=sys.stderr)
        return 2
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .planning import config

    paths = [Path(p) for p in args.files] or sorted(STACKS.glob("Pulumi.*.yaml"))
    failed = 0
    for path in paths:
        try:
            cfg = config.load_file(path)
            print(f"ok      {path.name}")
            for warning in config.advisories(cfg):
                print(f"  warning: {warning}")
        except config.ConfigError as err:
            failed += 1
            print(f"invalid {path.name}")
            for problem in err.problems:
                print(f"  - {problem}")
    print(f"{len(paths) - failed} of {len(paths)} stack configs valid")
    return 1 if failed else 0


def cmd_types(args: argparse.Namespace) -> int:
    from .planning import efa
    from .planning.catalog import Catalog

    for itype in Catalog().efa_types():
        s = efa.summarize(itype, efa.interfaces(itype, args.layout))
        accel = f"{itype.accelerator.count} x {itype.accelerator.name}" if itype.accelerator else "-"
        note = f"  [{itype.bandwidth_note}]" if itype.bandwidth_note else ""
        print(f"{itype.name:<22} cards {len(itype.network_cards):>2}  EFA {s.efa_devices:>2}  "
              f"EFA {s.efa_bandwidth_gbps:>6g} of {s.network_bandwidth_gbps:>6g} Gbps  {accel}{note}")
    return 0


def cmd_nccl(argv: list[str]) -> int:
    from .offline import nccl_report

    return nccl_report.cli(argv)


def stack_arguments(parser: argparse.ArgumentParser, stack_help: str = "stack name: reads stacks/Pulumi.<name>.yaml",
                    config_help: str = "path of a stack file") -> None:
    """--stack NAME or --config PATH: the stack file a command reads."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--stack", help=stack_help)
    where.add_argument("--config", help=config_help)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["nccl-report"]:
        return cmd_nccl(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m components", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="offline plan of a stack")
    stack_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output (same as --format json)")
    p.add_argument("--format", choices=["text", "json", "terraform-plan"], default="text",
                   help="terraform-plan: the plan as Terraform plan JSON (terraform show -json), for IaC scanners")
    p.set_defaults(func=cmd_plan)
    r = sub.add_parser("render", help="write every job's launch artifacts")
    stack_arguments(r)
    r.add_argument("--out", required=True, help="directory to write into")
    r.set_defaults(func=cmd_render)
    si = sub.add_parser("scan-inputs", help="write a stack's Terraform-plan export, manifests and checkov config")
    stack_arguments(si)
    si.add_argument("--out", required=True, help="directory to write into")
    si.set_defaults(func=cmd_scan_inputs)
    d = sub.add_parser("diff", help="what a change to a stack would create, update, replace, delete (offline)")
    stack_arguments(d, "stack name: the changed side is stacks/Pulumi.<name>.yaml as it is now", "path of the changed stack file")
    base = d.add_mutually_exclusive_group()
    base.add_argument("--base", help="the stack file as committed, run through the program as it is now")
    base.add_argument("--base-ref", default="HEAD",
                      help="git ref whose program and copy of the stack file are the base (default HEAD)")
    d.add_argument("--allow-replace", action="store_true", help="exit 0 even when a protected resource would be replaced or deleted")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_diff)
    v = sub.add_parser("validate", help="validate stack files (default: every stacks/Pulumi.*.yaml)")
    v.add_argument("files", nargs="*")
    v.set_defaults(func=cmd_validate)
    t = sub.add_parser("types", help="list EFA-capable instance types")
    t.add_argument("--layout", default="ena-primary", choices=["ena-primary", "efa-primary"])
    t.set_defaults(func=cmd_types)
    sub.add_parser("nccl-report", help="compare nccl-tests logs (see: nccl-report --help)")
    args = parser.parse_args(argv)

    from .planning.config import ConfigError

    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def run() -> None:
    """`python -m components` and the installed `efa-infra` command."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: with the SDKs loaded it is slow, and finalizing the
    # event loops the mock monitor's threads leave behind prints a spurious error.
    os._exit(code)


if __name__ == "__main__":
    run()
