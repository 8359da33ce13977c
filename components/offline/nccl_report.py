"""nccl-tests reports: `python -m components nccl-report LOG [LOG ...]`.

Reads the output of all_reduce_perf and its siblings (NVIDIA/nccl-tests; nccl_tests) and
compares runs: out-of-place bus bandwidth by message size, the first run's
speed-up over each other run (EFA over TCP, say) and each run's average bus
bandwidth; from NCCL's own lines in the same log (NCCL_DEBUG=INFO), each run's
transport, aws-ofi-nccl version and NIC count, flagging the first run (the EFA
one) when it did not run on EFA. --json gives the same for pipelines, --plot
draws it, and --stack/--fleet sets it against the fleet's EFA line rate.

A gate for pipelines: the exit status is NOT_ON_EFA when the first run was meant
for EFA and NCCL's lines show it was not, and NOT_COMPARABLE (with --strict)
when the runs are different collectives or cover different message sizes;
without --strict that is a warning.

Pure: no Pulumi import; matplotlib is imported only for --plot.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ..planning import config, efa, nccl_log, project
from . import exit_codes
from .nccl_tests import ReportError, Run, load_run

STACKS_DIR = project.stacks_dir()
# Exit statuses, from the CLI's one table (exit_codes; README, "Exit codes").
NOT_ON_EFA = exit_codes.GATE
BAD_INPUT = exit_codes.INVALID
NOT_COMPARABLE = exit_codes.NOT_COMPARABLE


@dataclass(frozen=True)
class LineRate:
    stack: str
    fleet: str
    instance_type: str
    efa_devices: int
    gbit_per_s: float  # EFA bandwidth attached to one node, Gbit/s as EC2 quotes it

    @property
    def gbyte_per_s(self) -> float:
        # nccl-tests reports GB/s (1e9 bytes); EC2 quotes Gbit/s (1e9 bits): 8 bits a byte.
        return self.gbit_per_s / 8


def speedups(runs: list[Run]) -> list[dict]:
    """The first run's out-of-place bus bandwidth over each other run's, by the sizes both measured.

    None where the other run measured 0.00 GB/s (small sizes), which no ratio describes.
    """
    first = runs[0].busbw()
    out = []
    for other in runs[1:]:
        theirs = other.busbw()
        by_size = {s: (first[s] / theirs[s] if theirs[s] else None) for s in first if s in theirs}
        out.append({"over": other.label, "by_size": by_size})
    return out


def line_rate(stack: str, fleet: str, stacks_dir: Path = STACKS_DIR) -> LineRate:
    """The EFA line rate of one node of a fleet, from the stack's config and the instance catalog."""
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        names = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in stacks_dir.glob("Pulumi.*.yaml"))
        raise ReportError(f"no stack {stack!r}; stacks: {', '.join(names) or 'none'}")
    try:
        cfg = config.load_file(path)
    except config.ConfigError as exc:
        raise ReportError(str(exc)) from None
    names = [f.name for f in cfg.fleets]
    if fleet not in names:
        raise ReportError(f"stack {stack} has no fleet {fleet!r}; fleets: {', '.join(names) or 'none'}")
    f = cfg.fleet(fleet)
    if not f.efa:
        raise ReportError(f"fleet {fleet} of stack {stack} has efa: false, so no EFA line rate to compare with")
    itype = cfg.catalog().get(f.instance_type)
    s = efa.summarize(itype, efa.interfaces(itype, f.efa_layout))
    return LineRate(stack, fleet, f.instance_type, s.efa_devices, s.efa_bandwidth_gbps)


def _against(run: Run, rate: LineRate) -> dict:
    # For a ring all-reduce, bus bandwidth is what each node pushes through its
    # network per direction, so it compares with one node's line rate directly.
    peak = max(run.rows, key=lambda r: r.oop_busbw_gbps)
    return {
        "label": run.label,
        "peak_busbw_gbps": peak.oop_busbw_gbps,
        "peak_size_bytes": peak.size_bytes,
        "peak_fraction": peak.oop_busbw_gbps / rate.gbyte_per_s,
        "avg_fraction": run.avg_busbw_gbps / rate.gbyte_per_s,
    }


def transport_problem(index: int, run: Run, rate: LineRate | None) -> str | None:
    """What is wrong with the transport of the first run, the one meant for EFA (the others are what it is compared with)."""
    if index != 0:
        return None
    return nccl_log.problem(run.transport, rate.efa_devices if rate else 0)


def _reduction(run: Run) -> str:
    return "/".join(sorted({r.redop for r in run.rows}))


def comparability(runs: list[Run]) -> list[str]:
    """Why the runs do not measure the same thing (different collectives, reductions or message sizes), if they don't."""
    first, out = runs[0], []
    for other in runs[1:]:
        if first.collective and other.collective and first.collective != other.collective:
            out.append(f"{first.label} ran {first.collective}, {other.label} ran {other.collective}")
        elif (ops := (_reduction(first), _reduction(other)))[0] != ops[1]:  # nccl-tests before 2.16.7 names no binary
            what = "different collectives" if "none" in ops else "different reduction ops"
            out.append(f"{first.label} used reduction {ops[0]}, {other.label} {ops[1]}: {what}")
        mine, theirs = first.busbw(), other.busbw()
        if (min(mine), max(mine)) != (min(theirs), max(theirs)):
            out.append(f"{first.label} measured {human_size(min(mine))} to {human_size(max(mine))}, "
                       f"{other.label} {human_size(min(theirs))} to {human_size(max(theirs))}: speed-ups cover the sizes both have")
    return out


def _transport_text(t: nccl_log.Transport) -> str:
    if t.network is None:
        return "not in the log (NCCL_DEBUG=INFO, subsystems INIT,NET, prints it)"
    if not t.ofi:
        return t.network
    parts = [t.network, f"aws-ofi-nccl {t.plugin_version or '(version not logged)'}",
             f"provider {t.provider or '(not logged)'}"]
    if t.nics is not None:
        parts.append(f"{t.nics} NIC{'s' * (t.nics != 1)}")
    return ", ".join(parts)


def to_json(runs: list[Run], rate: LineRate | None = None) -> dict:
    return {
        "not_comparable": comparability(runs),
        "runs": [
            {
                "label": run.label,
                "file": run.file,
                "collective": run.collective,
                "avg_busbw_gbps": run.avg_busbw_gbps,
                "avg_busbw_from": "footer" if run.footer_avg_busbw_gbps is not None else "rows",
                "transport": {**asdict(run.transport), "efa": run.transport.efa, "meant_for_efa": i == 0,
                              "problem": transport_problem(i, run, rate)},
                "rows": [asdict(r) for r in run.rows],
            }
            for i, run in enumerate(runs)
        ],
        # JSON keys are strings: sizes in bytes as text.
        "speedups": [{"over": s["over"], "by_size": {str(k): v for k, v in s["by_size"].items()}} for s in speedups(runs)],
        "line_rate": None if rate is None else {
            **asdict(rate),
            "gbyte_per_s": rate.gbyte_per_s,
            "runs": [_against(run, rate) for run in runs],
        },
    }


# --- output -----------------------------------------------------------------------


def human_size(n: int) -> str:
    """1048576 -> '1 MiB'. A size no binary unit divides stays in bytes, so no size is rounded."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def format_table(runs: list[Run], rate: LineRate | None = None) -> str:
    ups = speedups(runs)
    by_run = [run.busbw() for run in runs]
    sizes = sorted({s for b in by_run for s in b})
    header = ["size", *(run.label for run in runs), *(f"{runs[0].label} vs {u['over']}" for u in ups)]
    body = [
        [
            human_size(s),
            *(f"{b[s]:.2f}" if s in b else "-" for b in by_run),
            *(f"{u['by_size'][s]:.2f}x" if u["by_size"].get(s) is not None else "-" for u in ups),
        ]
        for s in sizes
    ]
    body.append(["avg busbw", *(f"{run.avg_busbw_gbps:.2f}" for run in runs), *("" for _ in ups)])
    widths = [max(map(len, col)) for col in zip(header, *body)]
    lines = ["Out-of-place bus bandwidth (GB/s) by message size"]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cells, widths)).rstrip() for cells in [header, *body]]
    lines.append("avg busbw: nccl-tests' Avg bus bandwidth, the mean over out-of-place and in-place rows")
    lines += [
        f"  {run.label}: the log has no Avg bus bandwidth line (cut short?); mean of its rows"
        for run in runs if run.footer_avg_busbw_gbps is None
    ]
    lines.append("Transport, from NCCL's lines in each log (the first run is the one meant for EFA):")
    for i, run in enumerate(runs):
        lines.append(f"  {run.label}: {_transport_text(run.transport)}")
        if problem := transport_problem(i, run, rate):
            lines.append(f"  ! {run.label} was meant for EFA, but {problem}")
    if rate is not None:
        lines.append(
            f"EFA line rate of fleet {rate.fleet} (stack {rate.stack}, {rate.instance_type}, "
            f"{rate.efa_devices} EFA device{'s' * (rate.efa_devices != 1)}): "
            f"{rate.gbit_per_s:g} Gbit/s = {rate.gbyte_per_s:.2f} GB/s per node"
        )
        for run in runs:
            a = _against(run, rate)
            lines.append(
                f"  {run.label}: peak {a['peak_busbw_gbps']:.2f} GB/s at {human_size(a['peak_size_bytes'])} "
                f"= {a['peak_fraction']:.1%} of line rate; average {run.avg_busbw_gbps:.2f} GB/s = {a['avg_fraction']:.1%}"
            )
    return "\n".join(lines)


def plot(runs: list[Run], path: str | Path):
    """Bus bandwidth against message size, one line per run, written to `path`; returns the Figure."""
    # The Agg canvas directly, not pyplot: no GUI backend, no global figure list.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for run in runs:
        ax.plot([r.size_bytes for r in run.rows], [r.oop_busbw_gbps for r in run.rows], marker="o", label=run.label)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: human_size(round(x))))
    ax.set_xlabel("message size (bytes, log2 scale)")
    ax.set_ylabel("out-of-place bus bandwidth (GB/s)")
    ax.set_title("nccl-tests bus bandwidth by message size")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return fig


# --- CLI --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit; the CLI wants one line
        raise exit_codes.UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m components nccl-report",
        description="Compare nccl-tests runs (all_reduce_perf and siblings): out-of-place bus bandwidth by "
        "message size, the first run's speed-up over each other, average bus bandwidth.",
        epilog=exit_codes.epilog("nccl-report"), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("logs", nargs="+", metavar="LOG", help="nccl-tests output, plain or with mpirun --tag-output prefixes")
    p.add_argument("--label", action="append", default=[], metavar="NAME", help="name of each run, once per LOG in order (default: file stem)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--plot", metavar="FILE.png", help="also draw bus bandwidth against message size")
    p.add_argument("--stack", metavar="NAME", help="stack (stacks/Pulumi.NAME.yaml) whose fleet gives the EFA line rate")
    p.add_argument("--fleet", metavar="NAME", help="fleet of --stack the runs were measured on")
    p.add_argument("--strict", action="store_true",
                   help=f"runs of different collectives or message sizes are an error (exit {NOT_COMPARABLE}), not a warning")
    return p


def _load_runs(paths: list[str], labels: list[str]) -> list[Run]:
    if labels and len(labels) != len(paths):
        raise exit_codes.UsageError(f"{len(labels)} --label for {len(paths)} logs; give one per LOG, in order")
    runs = [load_run(p, label) for p, label in zip(paths, labels or [None] * len(paths))]
    seen = [run.label for run in runs]
    dupes = sorted({x for x in seen if seen.count(x) > 1})
    if dupes:
        raise exit_codes.UsageError(f"two runs are labelled {', '.join(dupes)}; name them with --label")
    return runs


def cli(argv: list[str]) -> int:
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        if (args.stack is None) != (args.fleet is None):
            parser.error("--stack and --fleet go together: the fleet's instance type sets the line rate")
        runs = _load_runs(args.logs, args.label)
        rate = line_rate(args.stack, args.fleet) if args.stack else None
        if args.plot:
            try:
                plot(runs, args.plot)
            except (OSError, ValueError) as exc:  # a missing directory, an extension matplotlib cannot write
                raise exit_codes.ToolError(f"cannot write plot {args.plot}: {exc}") from None
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BAD_INPUT
    except exit_codes.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.USAGE
    except exit_codes.ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.TOOL
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    print(json.dumps(to_json(runs, rate), indent=2) if args.json else format_table(runs, rate))
    status = 0
    for why in comparability(runs):
        print(f"{'error' if args.strict else 'warning'}: the runs are not comparable: {why}", file=sys.stderr)
        status = NOT_COMPARABLE if args.strict else status
    if problem := transport_problem(0, runs[0], rate):
        print(f"error: {runs[0].label} was meant for EFA, but {problem}", file=sys.stderr)
        status = NOT_ON_EFA
    return status
