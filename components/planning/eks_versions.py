"""The Kubernetes versions EKS offers, as data (data/eks_versions.json: the EKS
release calendar with its source and the date it was read), and what EKS
allows between them: which version is in standard or extended support on a
day, which control-plane changes EKS takes, and whether node groups lag.
Pure: no Pulumi import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

CALENDAR = Path(__file__).resolve().parent.parent / "data" / "eks_versions.json"
GUIDE = "https://docs.aws.amazon.com/eks/latest/userguide/kubernetes-versions.html"
UPDATE_GUIDE = "https://docs.aws.amazon.com/eks/latest/userguide/update-cluster.html"
ROLLBACK_GUIDE = "https://docs.aws.amazon.com/eks/latest/userguide/rollback-cluster.html"
MAX_NODE_SKEW = 3  # minor versions nodes may trail the control plane (Kubernetes version skew policy)


@dataclass(frozen=True)
class Version:
    version: str
    release: date
    end_of_standard: date
    end_of_extended: date

    @property
    def minor(self) -> tuple[int, int]:
        return minor(self.version)

    def status(self, on: date) -> str:
        """standard, extended, unreleased or ended (EKS no longer creates or keeps clusters on it)."""
        if on < self.release:
            return "unreleased"
        if on < self.end_of_standard:
            return "standard"
        return "extended" if on < self.end_of_extended else "ended"


def minor(version: str) -> tuple[int, int]:
    major, minor_ = version.split(".")
    return int(major), int(minor_)


@lru_cache(maxsize=1)
def _data() -> dict:
    return json.loads(CALENDAR.read_text())


@lru_cache(maxsize=1)
def calendar() -> dict[str, Version]:
    return {v["version"]: Version(v["version"], date.fromisoformat(v["release"]), date.fromisoformat(v["endOfStandard"]),
                                  date.fromisoformat(v["endOfExtended"]))
            for v in _data()["versions"]}


def read_on() -> date:
    """The day the calendar was read from its source."""
    return date.fromisoformat(_data()["read"])


def default_version() -> str:
    """The newest version in standard support on the day the calendar was read. Fixed by the data, not by
    today's date: an unset eks.version moves only when the calendar is refreshed, never by itself."""
    return max((v for v in calendar().values() if v.status(read_on()) == "standard"), key=lambda v: v.minor).version


def offered(on: date) -> list[str]:
    return [v.version for v in sorted(calendar().values(), key=lambda v: v.minor) if v.status(on) in ("standard", "extended")]


def version_problem(version: str, on: date) -> str | None:
    """Why EKS would not create a cluster on `version` on that day, or None."""
    v = calendar().get(version)
    if v is not None and v.status(on) in ("standard", "extended"):
        return None
    why = ("EKS does not offer it" if v is None else
           f"EKS ended its extended support on {v.end_of_extended}" if v.status(on) == "ended" else
           f"EKS releases it on {v.release}")
    return f"{why}; on {on} EKS offers {', '.join(offered(on))} ({GUIDE})"


def extended_support_warning(version: str, on: date) -> str | None:
    """A note when `version` is in extended support on that day, which EKS bills at a higher hourly rate."""
    v = calendar().get(version)
    if v is None or v.status(on) != "extended":
        return None
    newer = [n for n in offered(on) if calendar()[n].status(on) == "standard"]
    return (f"{version} left EKS standard support on {v.end_of_standard}: a cluster on it pays extended-support "
            f"fees (on by default) until {v.end_of_extended}, when EKS upgrades it itself; versions in standard "
            f"support: {', '.join(newer)} ({GUIDE})")


def steps(old: str, new: str) -> list[str]:
    """The control-plane versions EKS passes through from `old` up to `new`, one minor at a time."""
    (major, a), (_, b) = minor(old), minor(new)
    return [f"{major}.{m}" for m in range(a + 1, b + 1)]


def upgrade_problem(old: str, new: str) -> str | None:
    """Why EKS refuses to move a control plane from `old` to `new` in one update, naming the steps it allows."""
    if minor(new) < minor(old):
        return (f"eks.version {old} -> {new} is a downgrade, which EKS does not take as a version change: it only "
                f"rolls a control plane back to the minor it was upgraded from, within 7 days of that upgrade, as a "
                f"rollback ({ROLLBACK_GUIDE}). Keep {old}, or roll the cluster back with EKS and then set the stack to match")
    path = steps(old, new)
    if len(path) > 1:
        return (f"eks.version {old} -> {new} skips {len(path) - 1} minor version{'s' * (len(path) > 2)}: EKS updates a "
                f"control plane one minor version at a time. Go {' -> '.join([old, *path])}, one `pulumi up` each, "
                f"moving the node groups (eks.nodeGroupVersion) to each version before the next ({UPDATE_GUIDE})")
    return None


def node_group_problem(node_version: str, control_plane: str) -> str | None:
    """Why `node_version` cannot run beside a `control_plane` version, or None."""
    lag = minor(control_plane)[1] - minor(node_version)[1]
    if lag < 0:
        return f"{node_version} is newer than the control plane's {control_plane}: nodes may not be newer than it"
    if lag > MAX_NODE_SKEW:
        return (f"{node_version} is {lag} minor versions behind the control plane's {control_plane}: nodes may trail it "
                f"by at most {MAX_NODE_SKEW} (Kubernetes version skew policy)")
    return None
