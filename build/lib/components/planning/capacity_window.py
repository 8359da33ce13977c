"""When a fleet on an EC2 Capacity Block runs: its nodes scale to size when the
block starts and to zero before it ends, by scheduled actions.

A block's instances cannot launch before its start, and EC2 takes them away at
its end, terminating from 30 minutes before it (EC2 User Guide, "Capacity
Blocks for ML"). EKS gives a CAPACITY_BLOCK node group its own scale-down 40
minutes before the end (EKS User Guide, capacity-blocks-mng); plain EC2 fleets
get the same lead from us. Pure: no Pulumi import.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

SCALE_DOWN_LEAD = timedelta(minutes=40)


class WindowOver(ValueError):
    pass


@dataclass(frozen=True)
class Schedule:
    start: str  # the block's start and end, as AWS writes times (UTC, ...Z)
    end: str
    scale_up_at: str | None  # None once the block has started: the group runs its nodes from the outset
    scale_down_at: str

    @property
    def started(self) -> bool:
        return self.scale_up_at is None


def aws_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def schedule(start: datetime, end: datetime, now: datetime) -> Schedule:
    """The scheduled actions of a block's window; raises WindowOver when the block
    has ended or its instances are already being taken away."""
    if start >= end:
        raise WindowOver(f"the block's start {aws_time(start)} is not before its end {aws_time(end)}")
    down = end - SCALE_DOWN_LEAD
    if now >= down:
        raise WindowOver(f"the block ends at {aws_time(end)} (its nodes go at {aws_time(down)}); it is {aws_time(now)}: "
                         "remove the fleet or give it a new block")
    return Schedule(aws_time(start), aws_time(end), None if now >= start else aws_time(start), aws_time(down))


def schedule_of_reservation(start: str, end: str, now: datetime) -> Schedule:
    """The same for a window read from the reservation at deploy time (AWS's RFC 3339 times). The
    offline plan has no such times: its values AWS assigns (`<...>`) pass through, the scale-up kept."""
    if all(t.startswith("<") and t.endswith(">") for t in (start, end)):
        return Schedule(start, end, start, f"{end} less {SCALE_DOWN_LEAD.seconds // 60} minutes")
    try:
        parsed = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (start, end)]
    except ValueError:
        raise WindowOver(f"the reservation's window {start} to {end} is not a pair of times") from None
    return schedule(parsed[0], parsed[1], now)
