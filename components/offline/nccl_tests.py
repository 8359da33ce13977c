"""nccl-tests logs: the output of all_reduce_perf and its siblings (NVIDIA/nccl-tests), plain or with
mpirun --tag-output prefixes, read into runs (rows by message size, the average bus bandwidth, and the
transport NCCL's own lines name). Pure: no Pulumi import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..planning import nccl_log

# mpirun --tag-output starts every line with "[jobid,rank]<stdout>:" (or <stderr>).
_MPI_TAG = re.compile(r"^\[\d+,\d+\]<std(?:out|err)>:")
_AVG_FOOTER = re.compile(r"^#\s*Avg bus bandwidth\s*:\s*(\S+)")
# The binary's name, printed by nccl-tests v2.16.7 and later (src/common.cu, commit dafb704).
_COLLECTIVE = re.compile(r"^#\s*Collective test starting:\s*(\S+)")
# Measured twice per row: out-of-place first, then in-place (src/common.cu, BenchTime).
_PER_PLACE = ("time", "algbw", "busbw", "#wrong")
_REQUIRED = ("size", "count", "type", "redop", *(p + c for p in ("oop_", "ip_") for c in _PER_PLACE))
# The unit line under the header; a different unit would make every figure wrong by a factor.
_UNITS = {"size": "(B)", "time": "(us)", "algbw": "(GB/s)", "busbw": "(GB/s)"}


class ReportError(Exception):
    """A problem the CLI reports as `error: ...` with exit code 2."""


@dataclass(frozen=True)
class Row:
    size_bytes: int
    count: int
    type: str
    redop: str  # "none" for collectives without a reduction (all_gather, broadcast, ...)
    oop_time_us: float
    oop_algbw_gbps: float
    oop_busbw_gbps: float
    ip_time_us: float
    ip_algbw_gbps: float
    ip_busbw_gbps: float
    wrong: int | None  # wrong elements, out-of-place plus in-place; None when not checked (-c 0)


@dataclass(frozen=True)
class Run:
    label: str
    file: str
    rows: tuple[Row, ...]
    footer_avg_busbw_gbps: float | None  # the log's "# Avg bus bandwidth" line, if it got that far
    transport: nccl_log.Transport  # what NCCL's INFO lines in the log say it used
    collective: str | None = None  # the test binary (all_reduce_perf, ...), when the log names it

    @property
    def avg_busbw_gbps(self) -> float:
        # nccl-tests' "Avg bus bandwidth" (src/common.cu) is the mean bus bandwidth
        # of every measurement it printed: each size's out-of-place AND in-place
        # figure. The footer has it unrounded; a log cut short has none, so take the
        # mean of the printed (2-decimal) figures instead.
        if self.footer_avg_busbw_gbps is not None:
            return self.footer_avg_busbw_gbps
        values = [v for r in self.rows for v in (r.oop_busbw_gbps, r.ip_busbw_gbps)]
        return sum(values) / len(values)

    def busbw(self) -> dict[int, float]:
        """Out-of-place bus bandwidth, GB/s, by message size in bytes."""
        return {r.size_bytes: r.oop_busbw_gbps for r in self.rows}


def _columns(names: list[str], where: str) -> dict[str, int]:
    """Header names -> column index, the per-place ones as oop_* and ip_*."""
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        name = "time" if name == "cputime" else name  # -C 1 times the CPU side instead
        if name in _PER_PLACE:
            name = ("ip_" if "oop_" + name in index else "oop_") + name
        index.setdefault(name, i)
    missing = [c.removeprefix("oop_").removeprefix("ip_") for c in _REQUIRED if c not in index]
    if missing:
        raise ReportError(f"{where}: the results header lacks {', '.join(dict.fromkeys(missing))}")
    return index


def _check_units(header: str, units: str, where: str) -> None:
    # Header and unit line are printed with the same right-aligned widths, so a
    # unit belongs to the header word that ends in the same column.
    names = {m.end(): m.group() for m in re.finditer(r"\S+", header)}
    for m in re.finditer(r"\S+", units):
        name = names.get(m.end())
        want = _UNITS.get("time" if name == "cputime" else name)
        if want and m.group() != want:
            raise ReportError(f"{where}: column {name} is in {m.group()}, expected {want}")


def _row(tokens: list[str], index: dict[str, int], where: str) -> Row:
    def value(key: str, kind=float):
        token = tokens[index[key]]
        try:
            return kind(token)
        except ValueError:
            column = key.replace("oop_", "out-of-place ").replace("ip_", "in-place ")
            raise ReportError(f"{where}: malformed data row: {column} is {token!r}") from None

    def wrong(key: str) -> int | None:
        token = tokens[index[key]]
        if token == "N/A":  # printed when the data check is off (-c 0)
            return None
        n = value(key)  # %g: large counts print as 1e+06
        return None if n < 0 else int(n)  # some versions print -1 for "not checked"

    counts = [wrong("oop_#wrong"), wrong("ip_#wrong")]
    return Row(
        size_bytes=value("size", int),
        count=value("count", int),
        type=tokens[index["type"]],
        redop=tokens[index["redop"]],
        oop_time_us=value("oop_time"),
        oop_algbw_gbps=value("oop_algbw"),
        oop_busbw_gbps=value("oop_busbw"),
        ip_time_us=value("ip_time"),
        ip_algbw_gbps=value("ip_algbw"),
        ip_busbw_gbps=value("ip_busbw"),
        wrong=None if None in counts else sum(counts),
    )


def parse_log(text: str, file: str, label: str | None = None) -> Run:
    """One nccl-tests log as a Run; ReportError names the file and line of what it cannot read.

    Columns are found by name from the header line, so newer versions' extra
    columns (per-iteration statistics, timestamps) are skipped. Lines that are
    neither comments nor start with a number (NCCL INFO/WARN, mpirun messages)
    are ignored; a line that starts with a number after the header must be a
    whole data row.
    """
    index: dict[str, int] | None = None
    header_text, header_line, width = "", 0, 0
    rows: list[Row] = []
    first_seen: dict[int, int] = {}
    footer = collective = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = _MPI_TAG.sub("", raw, count=1)
        tokens = line.split()
        where = f"{file}: line {n}"
        if not tokens:
            continue
        if tokens[0].startswith("#"):
            names = line.strip().lstrip("#").split()
            if names[:2] == ["size", "count"]:
                index, header_text, header_line = _columns(names, where), line, n
                # The timestamp column prints date and time: two words under one name.
                width = len(names) + ("timestamp" in names)
            elif n == header_line + 1 and names[:1] == ["(B)"]:
                _check_units(header_text, line, where)
            elif m := _COLLECTIVE.match(line.strip()):
                collective = m.group(1)
            elif m := _AVG_FOOTER.match(line.strip()):
                try:
                    footer = float(m.group(1))
                except ValueError:
                    raise ReportError(f"{where}: Avg bus bandwidth is {m.group(1)!r}, not a number") from None
            continue
        if index is None or not tokens[0].isdigit():
            continue
        if len(tokens) != width:
            raise ReportError(
                f"{where}: malformed data row: {len(tokens)} columns where the header on line {header_line} has {width}"
            )
        row = _row(tokens, index, where)
        if row.size_bytes in first_seen:
            # -d all / -o all repeat every size per datatype or op: one comparison per log.
            raise ReportError(
                f"{where}: size {row.size_bytes} again (first on line {first_seen[row.size_bytes]}); "
                "give one datatype and one op per log"
            )
        first_seen[row.size_bytes] = n
        rows.append(row)
    if index is None:
        raise ReportError(f"{file}: not an nccl-tests log: no results header ('#  size  count  type  redop ...')")
    if not rows:
        raise ReportError(f"{file}: no data rows after the results header on line {header_line} (did the run fail?)")
    return Run(label or Path(file).stem, file, tuple(rows), footer, nccl_log.transport(text), collective)


def load_run(path: str | Path, label: str | None = None) -> Run:
    try:
        text = Path(path).read_text(errors="replace")  # logs can carry stray bytes from other ranks
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror}") from None
    return parse_log(text, str(path), label)
