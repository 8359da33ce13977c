"""The CLI's exit codes: one meaning each, so that a pipeline can act on them. Every command's --help
and the README's table are written from this one table (a test compares them)."""

from __future__ import annotations

OK, INVALID, USAGE, TOOL, GATE, NOT_COMPARABLE = 0, 1, 2, 3, 4, 5

MEANING = {
    OK: "success (also when the reader of the output closes the pipe early, as head does)",
    INVALID: "invalid input: a stack's problems, each listed on stderr by its key (nccl-report: a log, stack or fleet "
             "it cannot use)",
    USAGE: "usage error: an unknown option, a missing or clashing argument",
    TOOL: "tool or environment error: a git ref that is not a commit, a folder it will not write into, "
          "a file it cannot read or write, an unexpected failure",
    GATE: "the check a pipeline gates on fails: diff, a guarded resource (VPC, subnet, NAT gateway, cluster, node "
          "group) would be replaced or deleted (--allow-replace lets it), or EKS refuses the change; nccl-report, the "
          "first run, meant for EFA, did not run on EFA",
    NOT_COMPARABLE: "nccl-report --strict: the runs are not comparable (different collectives or message sizes)",
}

# The codes each command can end with.
BY_COMMAND = {
    "plan": (OK, INVALID, USAGE, TOOL),
    "render": (OK, INVALID, USAGE, TOOL),
    "scan-inputs": (OK, INVALID, USAGE, TOOL),
    "diff": (OK, INVALID, USAGE, TOOL, GATE),
    "validate": (OK, INVALID, USAGE, TOOL),
    "types": (OK, USAGE, TOOL),
    "nccl-report": (OK, INVALID, USAGE, TOOL, GATE, NOT_COMPARABLE),
}


class UsageError(Exception):
    """Arguments that parse but do not fit together (exit USAGE)."""


class ToolError(Exception):
    """The tool or its environment failed, not the stack (exit TOOL)."""


def epilog(command: str) -> str:
    """The exit codes section of a command's --help."""
    return "exit codes:\n" + "\n".join(f"  {code}  {MEANING[code]}" for code in BY_COMMAND[command])
