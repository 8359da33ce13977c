"""The offline CLI: `python -m components COMMAND`.

    plan          what `pulumi up` would build for a stack, run under Pulumi's mocks
    render        write every job's launch artifacts (manifests, node scripts)
    scan-inputs   write what an IaC scanner (checkov) reads of a stack, with its config
    diff          what a change to a stack file creates, updates, replaces and deletes
    validate      check stack files, naming each problem by stack and key
    types         the EFA-capable instance types and their layouts
    nccl-report   compare nccl-tests logs (EFA against TCP)

No command needs AWS credentials or the Pulumi CLI. Each command's --help lists its exit codes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

from .offline import exit_codes
from .offline.exit_codes import ToolError, UsageError
from .planning.project import stacks_dir

STACKS = stacks_dir()  # the stacks of the project the command runs in, not of an installed copy
# What render wrote into its folder (JSON), so that it removes only its own files. No .json/.yaml extension:
# `kubectl apply -f DIR` reads only such files of a folder (k8s.io/cli-runtime pkg/resource/visitor.go, ignoreFile).
RENDERED = ".efa-infra-render"


def name_of_file(path: Path) -> str | None:
    """The stack a file stands for by its name: Pulumi.<name>.yaml."""
    name = path.name
    if name.startswith("Pulumi.") and name.endswith(".yaml") and len(name) > len("Pulumi..yaml"):
        return name.removeprefix("Pulumi.").removesuffix(".yaml")
    return None


def stack_file(args: argparse.Namespace) -> tuple[Path, str]:
    """The stack file a command reads and the stack's name, which decides resource names (the cluster's)
    and whether protection is on by default: never guessed from a file name that does not give it."""
    if not args.config:
        if args.stack_name:
            raise UsageError("--stack-name goes with --config (--stack names the stack already)")
        return STACKS / f"Pulumi.{args.stack}.yaml", args.stack
    path = Path(args.config)
    name = args.stack_name or name_of_file(path)
    if name is None:
        raise UsageError(f"--config {path}: the file name does not give the stack's name (Pulumi.<name>.yaml); "
                         "give it with --stack-name NAME: it decides resource names and the prod protection default")
    return path, name


def cmd_plan(args: argparse.Namespace) -> int:
    from .planning import config

    path, name = stack_file(args)
    settings = config.read_stack_file(path)
    cfg = config.load_settings(settings, str(path))  # a clean error before Pulumi is even imported

    from .offline import mocks  # imports Pulumi and the AWS SDK modules the program uses

    run = mocks.run(settings, name)
    if run.error:
        print(f"error: {run.error}", file=sys.stderr)
        return exit_codes.INVALID
    if args.format == "terraform-plan":
        from .offline import terraform_plan

        print(json.dumps(terraform_plan.export(run.resources, cfg.region, name), indent=2))
        return exit_codes.OK
    from .offline import report
    from .planning import launch, plan

    clusters = {c.name for c in cfg.clusters}
    jobs = [report.job_facts(launch.job_plan(cfg, j), j.fleet in clusters, j.s3) for j in cfg.jobs]
    doc = report.plan_document(plan.build(cfg), name, run.resources, jobs, run.outputs.get("capacityWindows"),
                               run.outputs.get("capacityReservations"))
    print(json.dumps(doc, indent=2) if args.json or args.format == "json" else report.render_text(doc))
    return exit_codes.OK


def rendered_files(cfg, name: str) -> dict[str, str]:
    """Every job's launch artifacts by file name."""
    from .planning import launch

    files: dict[str, str] = {}
    for job in cfg.jobs:
        if launch.job_plan(cfg, job).target == "eks":
            files[f"{job.name}.yaml"] = launch.manifests_yaml(launch.render_manifests(cfg, job))
        else:
            script = launch.render_node_script(cfg, job, stack=name)
            files[f"{job.name}.sh"] = script
            files[f"{job.name}.ssm.json"] = json.dumps(launch.ssm_document(script, job.name), indent=2) + "\n"
    return files


def cmd_render(args: argparse.Namespace) -> int:
    from .planning import config

    path, name = stack_file(args)
    cfg = config.load_file(path)
    out = Path(args.out)
    files = rendered_files(cfg, name)
    record = out / RENDERED
    present = {p.name for p in out.iterdir()} if out.is_dir() else set()
    try:
        earlier = set(json.loads(record.read_text())["files"]) if record.exists() else set()
    except (ValueError, KeyError, TypeError):
        raise ToolError(f"{record} is not render's record of the files it wrote; remove the folder's contents by hand") from None
    foreign = sorted(present - earlier - {RENDERED})
    if foreign:
        raise ToolError(f"{out} holds files render did not write ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}): "
                        "give an empty or new folder, so that applying the folder applies only this stack's jobs")
    out.mkdir(parents=True, exist_ok=True)
    for filename, text in files.items():
        (out / filename).write_text(text)
        print(out / filename)
    for stale in sorted(earlier - set(files)):
        (out / stale).unlink(missing_ok=True)
        print(f"removed {out / stale} (its job is no longer in the stack)")
    record.write_text(json.dumps({"stack": name, "files": sorted(files)}, indent=2) + "\n")
    if not cfg.jobs:
        print(f"stack {name} has no jobs")
    return exit_codes.OK


def cmd_scan_inputs(args: argparse.Namespace) -> int:
    from .offline import scan

    path, name = stack_file(args)
    for file in scan.write_inputs(path, name, Path(args.out)):
        print(file)
    return exit_codes.OK


def repository_of(path: Path) -> tuple[Path, Path]:
    """The git repository holding a stack file, and the file's path in it."""
    top = subprocess.run(["git", "-C", str(path.resolve().parent), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0:
        raise UsageError(f"--base-ref needs a stack file in a git repository ({path} is not in one); "
                         "give the committed one with --base FILE")
    repo = Path(top.stdout.strip()).resolve()
    return repo, path.resolve().relative_to(repo)


def committed_resources(ref: str, repo: Path, rel: Path, name: str) -> tuple[list | None, str]:
    """What `ref` registers for its copy of the stack file `rel` (None: the file did not exist there). A
    repository that holds the program (this one) runs that commit's program on that commit's file, offline in a
    copy of the tree; a project that uses the installed package runs the installed program on that file."""
    import tempfile

    from .offline import diff

    source = f"{rel.as_posix()} at {ref}"
    git = ["git", "-C", str(repo)]
    known = subprocess.run([*git, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], capture_output=True, text=True)
    if known.returncode != 0:
        raise ToolError(f"--base-ref: {ref!r} is not a commit of {repo}")
    listed = subprocess.run([*git, "ls-tree", "--name-only", ref, rel.as_posix(), "components/__main__.py"],
                            capture_output=True, text=True).stdout.split()
    if rel.as_posix() not in listed:
        return None, f"{source} (not there: every resource is new)"
    with tempfile.TemporaryDirectory(prefix="efa-infra-base-") as tree:
        if "components/__main__.py" not in listed:
            from .offline import mocks
            from .planning import config

            copy = Path(tree) / rel.name
            copy.write_bytes(subprocess.run([*git, "show", f"{ref}:{rel.as_posix()}"], capture_output=True, check=True).stdout)
            settings = config.read_stack_file(copy)
            config.load_settings(settings, source)
            run = mocks.run(settings, name)
            if run.error:
                raise ToolError(f"the base, {source}, cannot be planned: {run.error}")
            return run.resources, source
        # The name is passed only when the file's own does not give it: older commits' CLIs lack --stack-name.
        named = [] if name_of_file(rel) == name else ["--stack-name", name]
        archive = subprocess.run([*git, "archive", ref], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
        planned = subprocess.run([sys.executable, "-m", "components", "plan", "--config", rel.as_posix(), *named, "--json"],
                                 cwd=tree, capture_output=True, text=True)
    if planned.returncode != 0:
        raise ToolError(f"the base, {source}, cannot be planned: {planned.stderr.strip().removeprefix('error: ')}")
    # Paths the program passes as inputs (a kustomize directory) name the copy: they are the repository's.
    doc = json.loads(planned.stdout.replace(json.dumps(tree)[1:-1], json.dumps(str(repo))[1:-1]))
    return [diff.Resource(r["type"], r["name"], r["urn"], r["inputs"], r.get("protect", False)) for r in doc["resources"]], source


def diff_stack_name(args: argparse.Namespace, path: Path) -> str:
    """The stack both sides of a diff stand for: --stack, --stack-name, or the file names (which must agree)."""
    if args.stack or args.stack_name:
        return stack_file(args)[1]
    given = {n for n in (name_of_file(path), args.base and name_of_file(Path(args.base))) if n}
    if len(given) != 1:
        why = f"the files name different stacks ({', '.join(sorted(given))})" if given else "no file name gives it (Pulumi.<name>.yaml)"
        raise UsageError(f"which stack is this a change of? {why}: give it with --stack-name NAME")
    return given.pop()


def cmd_diff(args: argparse.Namespace) -> int:
    from .planning import config
    from .offline import diff

    path = Path(args.config) if args.config else STACKS / f"Pulumi.{args.stack}.yaml"
    name = diff_stack_name(args, path)
    after = config.read_stack_file(path)
    config.load_settings(after, str(path))  # clean errors before Pulumi is imported
    if args.base:
        before = config.read_stack_file(args.base)
        config.load_settings(before, args.base)
    else:
        base_resources, base = committed_resources(args.base_ref, *repository_of(path), name)

    from .offline import mocks

    runs = []
    for settings in ([before] if args.base else []) + [after]:
        run = mocks.run(settings, name)
        if run.error:
            print(f"error: {run.error}", file=sys.stderr)
            return exit_codes.INVALID
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
        return exit_codes.GATE
    if stopped:
        print(f"error: {diff.blocked_message(stopped)}. Rerun with --allow-replace if that is what you mean.", file=sys.stderr)
        return exit_codes.GATE
    return exit_codes.OK


def cmd_validate(args: argparse.Namespace) -> int:
    from .planning import config

    if args.stack and args.files:
        raise UsageError("give stack files or --stack names, not both")
    paths = [Path(p) for p in args.files] or [STACKS / f"Pulumi.{s}.yaml" for s in args.stack or ()] \
        or sorted(STACKS.glob("Pulumi.*.yaml"))
    results = []
    for path in paths:
        try:
            cfg = config.load_file(path)
            results.append({"file": str(path), "valid": True, "problems": [],
                            "warnings": [str(w) for w in config.advisories(cfg)]})
        except config.ConfigError as err:
            results.append({"file": str(path), "valid": False,
                            "problems": [{"key": p.path, "message": p.message} for p in err.problems], "warnings": []})
    failed = sum(not r["valid"] for r in results)
    if args.json:
        print(json.dumps({"valid": len(results) - failed, "total": len(results), "stacks": results}, indent=2))
    else:
        for r in results:
            print(f"{'ok     ' if r['valid'] else 'invalid'} {Path(r['file']).name}")
            for w in r["warnings"]:
                print(f"  warning: {w}")
            for p in r["problems"]:
                print(f"  - {p['key']}: {p['message']}")
        print(f"{len(results) - failed} of {len(results)} stack configs valid")
    return exit_codes.INVALID if failed else exit_codes.OK


def cmd_types(args: argparse.Namespace) -> int:
    from .planning import efa
    from .planning.catalog import Catalog, matches

    types = [t for t in Catalog().efa_types() if not args.filter or matches(t.name, args.filter)]
    if not types:
        print(f"no EFA-capable type matches {args.filter!r}", file=sys.stderr)
        return exit_codes.OK
    print(f"{'type':<22} {'cards':>5}  {'EFA':>3}  {'EFA Gbps':>8} of {'all Gbps':>8}  accelerators")
    for itype in types:  # the catalog's natural order
        s = efa.summarize(itype, efa.interfaces(itype, args.layout))
        accel = f"{itype.accelerator.count} x {itype.accelerator.name}" if itype.accelerator else "-"
        note = f"  [{itype.bandwidth_note}]" if itype.bandwidth_note else ""
        print(f"{itype.name:<22} {len(itype.network_cards):>5}  {s.efa_devices:>3}  "
              f"{s.efa_bandwidth_gbps:>8g} of {s.network_bandwidth_gbps:>8g}  {accel}{note}")
    return exit_codes.OK


def cmd_nccl(argv: list[str]) -> int:
    from .offline import nccl_report

    return nccl_report.cli(argv)


def stack_arguments(parser: argparse.ArgumentParser, stack_help: str = "stack name: reads stacks/Pulumi.<name>.yaml",
                    config_help: str = "path of a stack file (its name gives the stack's: Pulumi.<name>.yaml)",
                    required: bool = True) -> None:
    """--stack NAME or --config PATH (with --stack-name): the stack file a command reads, and the stack's name."""
    where = parser.add_mutually_exclusive_group(required=required)
    where.add_argument("--stack", metavar="NAME", help=stack_help)
    where.add_argument("--config", metavar="FILE", help=config_help)
    parser.add_argument("--stack-name", metavar="NAME",
                        help="with --config: the stack's name, when the file's name does not give it (it decides "
                             "resource names and whether protection is on by default: prod*)")


def command(sub, name: str, summary: str, description: str, func) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=summary, description=description, epilog=exit_codes.epilog(name),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m components", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = command(sub, "plan", "offline plan of a stack",
                "What `pulumi up` would build for a stack, from the real program run under Pulumi's mocks: fleets, "
                "subnets, network flows, jobs and every resource with its inputs. No AWS call is made.", cmd_plan)
    stack_arguments(p)
    p.add_argument("--json", action="store_true", help="the whole plan as JSON (same as --format json)")
    p.add_argument("--format", choices=["text", "json", "terraform-plan"], default="text",
                   help="text (default: large inputs summarised by kind, size and hash), json (every input whole), or "
                        "terraform-plan: the plan as Terraform plan JSON (terraform show -json), for IaC scanners")
    r = command(sub, "render", "write every job's launch artifacts",
                "Write every job's launch artifacts into a folder: Kubernetes manifests for jobs on a cluster, a "
                "launch script and its SSM document for jobs on EC2 fleets. Files of jobs no longer in the stack are "
                "removed; a folder holding files render did not write is refused.", cmd_render)
    stack_arguments(r)
    r.add_argument("--out", required=True, metavar="DIR", help="folder to write into (created if missing)")
    si = command(sub, "scan-inputs", "write a stack's Terraform-plan export, manifests and checkov config",
                 "Write what an IaC scanner reads of a stack: its plan as Terraform plan JSON, its jobs' manifests, "
                 "and a checkov config with the project's skip list.", cmd_scan_inputs)
    stack_arguments(si)
    si.add_argument("--out", required=True, metavar="DIR", help="folder to write into")
    d = command(sub, "diff", "what a change to a stack would create, update, replace, delete (offline)",
                "What a change to a stack file creates, updates in place, replaces and deletes, with the inputs that "
                "force each replacement, from two offline runs of the program. Both sides are run as the same stack.",
                cmd_diff)
    stack_arguments(d, "stack name: the changed side is stacks/Pulumi.<name>.yaml as it is now",
                    "path of the changed stack file", required=True)
    base = d.add_mutually_exclusive_group()
    base.add_argument("--base", metavar="FILE", help="the stack file before the change, run through the program as it is now")
    base.add_argument("--base-ref", default="HEAD", metavar="REF",
                      help="git ref whose program and copy of the stack file are the base (default HEAD)")
    d.add_argument("--allow-replace", action="store_true",
                   help="exit 0 even when a guarded resource (VPC, subnet, NAT gateway, cluster, node group) would be "
                        "replaced or deleted")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    v = command(sub, "validate", "validate stack files (default: every stacks/Pulumi.*.yaml)",
                "Check stack files without running the program: every problem of each, by key.", cmd_validate)
    v.add_argument("files", nargs="*", metavar="FILE", help="stack files to check (default: every stacks/Pulumi.*.yaml)")
    v.add_argument("--stack", action="append", metavar="NAME", help="a stack to check by name (stacks/Pulumi.<name>.yaml); repeatable")
    v.add_argument("--json", action="store_true", help="machine-readable output: each stack with its problems")
    t = command(sub, "types", "list EFA-capable instance types",
                "The EFA-capable instance types of the catalog (components/data/instance_types.json), in natural "
                "order, with their network cards, EFA devices, bandwidth and accelerators.", cmd_types)
    t.add_argument("filter", nargs="?", metavar="FILTER",
                   help="a family (p5), a type (p5.48xlarge) or a pattern with * and ? ('g6*.*xlarge')")
    t.add_argument("--layout", default="ena-primary", choices=["ena-primary", "efa-primary"],
                   help="the interface layout whose EFA devices and bandwidth are counted (default ena-primary)")
    n = command(sub, "nccl-report", "compare nccl-tests logs (see: nccl-report --help)",
                "Compare nccl-tests logs; its own options are listed by nccl-report --help.", None)
    n.add_argument("args", nargs=argparse.REMAINDER, help="nccl-report's own arguments")
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["nccl-report"]:
        runner = lambda: cmd_nccl(argv[1:])  # noqa: E731
    else:
        args = parser().parse_args(argv)  # a usage error exits USAGE (argparse's 2)
        runner = lambda: args.func(args)  # noqa: E731

    from .planning.config import ConfigError

    try:
        return runner()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_codes.INVALID
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_codes.USAGE
    except (ToolError, OSError) as err:
        if isinstance(err, BrokenPipeError):
            raise
        print(f"error: {err}", file=sys.stderr)
        return exit_codes.TOOL


def run() -> int:
    """main, as a process ends it: a closed pipe is a quiet success, an unexpected failure a tool error."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (head, grep -q) has what it wanted
        return exit_codes.OK
    except Exception:
        traceback.print_exc()
        return exit_codes.TOOL
    return code


def console() -> None:
    """`python -m components` and the installed `efa-infra` command: main, as a process ends it."""
    # A short-lived process: the cyclic collector's passes over the many objects the SDKs create at import
    # cost a tenth to a fifth of a plan's time and free nothing that matters before it exits (same peak memory).
    gc.disable()
    code = run()
    try:
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    # Skip interpreter teardown: with the SDKs loaded it is slow, and finalizing the
    # event loops the mock monitor's threads leave behind prints a spurious error.
    os._exit(code)


if __name__ == "__main__":
    console()
