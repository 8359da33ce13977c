"""What a change to a stack does to its resources: created, updated in place,
replaced or deleted, and which inputs force each replacement.

Resources are matched by URN between two offline runs of the program. Whether
a changed input replaces a resource comes from the provider's own facts
(data/replace_facts.json: terraform-provider-aws ForceNew, which pulumi-aws
inherits, with the file and commit each was read from). What EKS itself
refuses in a version change, and node rolls on a Capacity Block, are said
beside the changes (eks_refusals, eks_notes). Pure: no Pulumi import.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..planning import eks_versions
from ..planning.plan import PROTECTED_TYPES

FACTS = Path(__file__).resolve().parent.parent / "data" / "replace_facts.json"
ACTIONS = ("create", "update", "replace", "delete")
PLACEHOLDER = re.compile(r"<([^<>]+?)\.[A-Za-z]+>")  # mocks.placeholder: <name.attr>


@lru_cache(maxsize=1)
def facts() -> dict:
    return json.loads(FACTS.read_text())


def camel(tf_path: str) -> str:
    """A provider attribute path as the program's inputs name it: launch_template.id -> launchTemplate.id."""
    return ".".join(re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), part) for part in tf_path.split("."))


def replace_inputs(typ: str) -> list[str] | None:
    """The inputs whose change replaces a resource of `typ`; None when the type has no such facts (a grouping component)."""
    data = facts()
    if typ in data["types"]:
        return [camel(a) for a in data["types"][typ]["forceNew"]]
    if typ in data["components"]:
        return list(data["components"][typ]["forceNew"])
    return None


@dataclass(frozen=True)
class Resource:
    """A registered resource as the diff sees it (mocks.Registered has these fields)."""

    type: str
    name: str
    urn: str
    inputs: dict
    protect: bool = False  # under Pulumi protect in that run


@dataclass
class Change:
    action: str  # one of ACTIONS
    type: str
    name: str
    urn: str
    changed: list[str] = field(default_factory=list)  # input paths that differ
    because: list[str] = field(default_factory=list)  # the replace-forcing ones among them
    protect: bool = False  # the resource is under Pulumi protect (in the base, for a replace or delete)

    @property
    def guarded(self) -> str | None:
        """The kind diff refuses to replace or delete unasked (VPC, subnet, ...), whether or not Pulumi protects it."""
        return PROTECTED_TYPES.get(self.type)

    @property
    def mark(self) -> str:
        """How the text output tags a guarded resource: 'protected' only when Pulumi protect is on for it."""
        return f"{'protected' if self.protect else 'guarded'}: {self.guarded}"

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "type": self.type, "name": self.name, "urn": self.urn,
                "changedInputs": self.changed, "replaceBecause": self.because, "guardedKind": self.guarded,
                "pulumiProtect": self.protect}


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b))


def changed_paths(old: Any, new: Any, path: str = "") -> set[str]:
    """Dotted input paths (list positions left out) where `old` and `new` differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: set[str] = set()
        for key in old.keys() | new.keys():
            sub = f"{path}.{key}" if path else key
            if key not in old or key not in new:
                out.add(sub)
            else:
                out |= changed_paths(old[key], new[key], sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return set().union(*(changed_paths(a, b, path) for a, b in zip(old, new)))
    return set() if _same(old, new) else {path}


def referenced(value: Any, path: str = "") -> list[tuple[str, str]]:
    """(input path, resource name) for every placeholder of another resource's output in `value`."""
    if isinstance(value, dict):
        return [r for k, v in value.items() for r in referenced(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [r for v in value for r in referenced(v, path)]
    if isinstance(value, str):
        return [(path, m.group(1)) for m in PLACEHOLDER.finditer(value)]
    return []


def _forcing(paths: set[str], forcing: list[str]) -> list[str]:
    return sorted(p for p in paths if any(p == f or p.startswith(f + ".") or f.startswith(p + ".") for f in forcing))


def _source_kind_change(old: Resource, new: Resource) -> list[str]:
    """A security group rule whose source changes kind (a CIDR for a group, say) is replaced."""
    kinds = facts()["types"].get(new.type, {}).get("replaceWhenSourceKindChanges", [])
    had, has = ({camel(k) for k in kinds if camel(k) in r.inputs} for r in (old, new))
    return sorted(had ^ has)


def compare(before: list, after: list) -> list[Change]:
    """Every resource that would be created, updated, replaced or deleted going from `before` to `after`
    (registrations of two offline runs), matched by URN."""
    old = {r.urn: r for r in before}
    new = {r.urn: r for r in after}
    changes = {urn: Change("create", r.type, r.name, urn, protect=r.protect) for urn, r in new.items() if urn not in old}
    changes |= {urn: Change("delete", r.type, r.name, urn, protect=r.protect) for urn, r in old.items() if urn not in new}
    kept = [urn for urn in new if urn in old]
    # A replaced resource's outputs are new values: what refers to them changes too, until nothing more does.
    # Placeholders name resources, not URNs: a resource's own name in its inputs is another resource's.
    while True:
        replaced = [(c.name, c.urn) for c in changes.values() if c.action == "replace"]
        versioned = [(c.name, c.urn) for c in changes.values()
                     if c.action == "update" and facts()["types"].get(c.type, {}).get("newVersionOnUpdate")]
        progress = False
        for urn in kept:
            o, n = old[urn], new[urn]
            paths = changed_paths(o.inputs, n.inputs)
            for path, name in referenced(n.inputs):
                if any(name == other and u != urn for other, u in replaced):
                    paths.add(path)
                elif any(name == other and u != urn for other, u in versioned):
                    paths.add(path.rsplit(".", 1)[0] + ".version" if "." in path else path)
            if not paths:
                continue
            because = _forcing(paths, replace_inputs(n.type) or []) + _source_kind_change(o, n)
            change = Change("replace" if because else "update", n.type, n.name, urn, sorted(paths), because, o.protect)
            if changes.get(urn) != change:
                changes[urn] = change
                progress = True
        if not progress:
            break
    order = {a: i for i, a in enumerate(ACTIONS)}
    return sorted(changes.values(), key=lambda c: (order[c.action], c.type, c.name))


def blocked(changes: list[Change]) -> list[Change]:
    """Changes that replace or delete a guarded kind."""
    return [c for c in changes if c.guarded and c.action in ("replace", "delete")]


def blocked_message(stopped: list[Change]) -> str:
    names = ", ".join(f"{c.guarded} {c.name} ({c.action}{', under Pulumi protect' if c.protect else ''})" for c in stopped)
    return f"{len(stopped)} guarded resource{'s' * (len(stopped) != 1)} would be replaced or deleted: {names}"


def summary(changes: list[Change], unchanged: int) -> dict[str, int]:
    counts = {a: sum(c.action == a for c in changes) for a in ACTIONS}
    return {**counts, "unchanged": unchanged}


def render_text(changes: list[Change], unchanged: int, title: str) -> str:
    marks = {"create": "+", "update": "~", "replace": "+-", "delete": "-"}
    out = [title]
    for c in changes:
        line = f"  {marks[c.action]:<2} {c.action:<8} {c.type}  {c.name}"
        if c.action == "replace":
            line += f"  replaced because {', '.join(c.because)} changed"
        elif c.action == "update":
            line += f"  ({', '.join(c.changed)})"
        if c.guarded and c.action in ("replace", "delete"):
            line += f"  [{c.mark}]"
        out.append(line)
    s = summary(changes, unchanged)
    out.append(f"{s['create']} to create, {s['update']} to update in place, {s['replace']} to replace, "
               f"{s['delete']} to delete, {unchanged} unchanged")
    return "\n".join(out)


CLUSTER, NODE_GROUP = "eks:index:Cluster", "aws:eks/nodeGroup:NodeGroup"
# Node group inputs whose update replaces every node, one by one, through a rolling update (EKS User Guide,
# managed-node-update-behavior): a new launch template version, a Kubernetes version or an AMI release.
ROLLING_INPUTS = ("launchTemplate.version", "version", "releaseVersion")
CAPACITY_BLOCK_GUIDE = "https://docs.aws.amazon.com/eks/latest/userguide/capacity-blocks-mng.html"


def _cluster_version(resources: list) -> str | None:
    return next((r.inputs.get("version") for r in resources if r.type == CLUSTER), None)


def eks_refusals(before: list, after: list) -> list[str]:
    """What EKS refuses in a change of the cluster's or node groups' versions (planning/eks_versions.py), each
    naming the steps EKS allows. A change EKS refuses fails halfway through `pulumi up`: no flag overrides it."""
    old, new = _cluster_version(before), _cluster_version(after)
    out = []
    if old and new and old != new:
        problem = eks_versions.upgrade_problem(old, new)
        if problem:
            out.append(problem)
        elif eks_versions.minor(new) > eks_versions.minor(old):
            lagging = sorted({r.inputs["version"] for r in before if r.type == NODE_GROUP and r.inputs.get("version") not in (None, old)})
            if lagging:
                out.append(f"eks.version {old} -> {new}: node groups are on {', '.join(lagging)}, and EKS moves a control "
                           f"plane only once every managed node group matches its version ({old}): set "
                           f"eks.nodeGroupVersion to {old} and deploy that first ({eks_versions.UPDATE_GUIDE})")
    was = {r.urn: r for r in before if r.type == NODE_GROUP}
    for r in after:
        if r.type != NODE_GROUP or r.inputs.get("version") is None:
            continue
        v, prior = r.inputs["version"], was.get(r.urn)
        if prior is None and new and v != new:
            out.append(f"node group {r.name} would be created at {v}, but EKS creates node groups only at the cluster's "
                       f"version ({new}): set eks.nodeGroupVersion to {new}, or add the fleet once the node groups are there")
        elif prior is not None and prior.inputs.get("version") and eks_versions.minor(v) < eks_versions.minor(prior.inputs["version"]):
            out.append(f"node group {r.name}: {prior.inputs['version']} -> {v} is a downgrade, which EKS does not do to a "
                       "node group (UpdateNodegroupVersion): keep eks.nodeGroupVersion")
    return out


def eks_notes(before: list, after: list, changes: list[Change]) -> list[str]:
    """What a change does to nodes that a plain update hides: node groups left behind by the control plane, and
    node rolls on a Capacity Block node group, which has no spare instances to roll onto."""
    notes = []
    old, new = _cluster_version(before), _cluster_version(after)
    if old and new and old != new:
        behind = sorted(r.name for r in after if r.type == NODE_GROUP and r.inputs.get("version") in (None, old))
        if behind:
            notes.append(f"node groups {', '.join(behind)} stay behind the control plane ({old} or older, now {new}): move "
                         f"them with eks.nodeGroupVersion: \"{new}\" before the next control-plane update (a rolling "
                         "update of their nodes); pinned-AMI fleets move with a new AMI")
    by_urn = {r.urn: r for r in after}
    for c in changes:
        r = by_urn.get(c.urn)
        if c.type != NODE_GROUP or r is None or r.inputs.get("capacityType") != "CAPACITY_BLOCK":
            continue
        rolling = [p for p in c.changed if p in ROLLING_INPUTS]
        if c.action == "replace" or rolling:
            what = f"replaced ({', '.join(c.because)})" if c.action == "replace" else f"rolled ({', '.join(rolling)})"
            notes.append(
                f"DISRUPTIVE: node group {c.name} is on a Capacity Block and its nodes would be {what}. A rolling "
                "update launches a new node before draining an old one, and a running block has no spare instance: "
                "the update stalls and fails. While the block runs, first scale the node group to 0 (aws eks "
                "update-nodegroup-config --scaling-config minSize=0,desiredSize=0), wait for its nodes to terminate, "
                f"then `pulumi up`, then restore the size (EKS User Guide, {CAPACITY_BLOCK_GUIDE}). Outside the "
                "block's window the node group has no nodes and the change is safe")
    return notes
