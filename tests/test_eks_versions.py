"""EKS versions as data: the calendar, the default it yields, what validate refuses and warns about, and what
`diff` refuses (exit 2) or notes when the control plane or the node groups change version."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from datetime import date

import pytest
import yaml

from components.offline import diff, mocks
from components.planning import config, eks_versions
from conftest import ROOT, settings_of

PROD = ROOT / "stacks" / "Pulumi.prod.yaml"
CB = ROOT / "stacks" / "Pulumi.eks-capacity-block.yaml"


# --- the calendar ------------------------------------------------------------------------


def test_the_calendar_names_its_source_and_the_day_it_was_read():
    data = json.loads(eks_versions.CALENDAR.read_text())
    assert "kubernetes-versions" in data["source"] and data["read"] == "2026-12-07"
    for v in eks_versions.calendar().values():
        # 14 months of standard support, then 12 of extended (the guide's rule), on the calendar's own dates.
        assert v.release < v.end_of_standard < v.end_of_extended
        assert (v.end_of_extended.year - v.end_of_standard.year, v.end_of_extended.month) == (1, v.end_of_standard.month)


def test_the_default_is_the_newest_version_in_standard_support_on_the_calendars_own_dates():
    default = eks_versions.calendar()[eks_versions.default_version()]
    read = eks_versions.read_on()
    assert default.status(read) == "standard"
    assert all(v.minor < default.minor for v in eks_versions.calendar().values()
               if v.status(read) == "standard" and v is not default)
    # The versions the issue names on the day it was read: 1.33 and 1.34 have left standard support.
    assert eks_versions.calendar()["1.33"].status(read) == eks_versions.calendar()["1.34"].status(read) == "extended"
    assert config.load({"region": "us-east-1"}).eks.version == default.version


@pytest.mark.parametrize(("version", "on", "status"), [
    ("1.34", date(2026, 12, 1), "standard"), ("1.34", date(2026, 12, 2), "extended"),  # billing starts that day (UTC)
    ("1.32", date(2027, 3, 22), "extended"), ("1.32", date(2027, 3, 23), "ended"),
    ("1.36", date(2026, 6, 1), "unreleased"), ("1.36", date(2026, 6, 2), "standard"),
])
def test_support_status_at_both_ends_of_each_period(version, on, status):
    assert eks_versions.calendar()[version].status(on) == status


def test_a_version_eks_does_not_offer_is_named_with_what_it_offers():
    assert eks_versions.version_problem("1.35", date(2026, 12, 7)) is None
    assert "EKS does not offer it" in eks_versions.version_problem("1.99", date(2026, 12, 7))
    assert "ended its extended support on 2026-11-26" in eks_versions.version_problem("1.31", date(2026, 12, 7))
    assert eks_versions.version_problem("1.31", date(2026, 11, 25)) is None


# --- validate ------------------------------------------------------------------------------


def settings_doc(**eks) -> dict:
    return {"region": "us-east-1", "eks": {"availabilityZones": ["us-east-1a", "us-east-1b"], "enabled": True,
                                           "publicAccessCidrs": ["203.0.113.0/28"],
                                           "deployer": {"runsOn": "r", "cidrs": ["203.0.113.0/28"]}, **eks}}


def problems_of(doc: dict) -> list[config.Problem]:
    with pytest.raises(config.ConfigError) as err:
        config.load(doc)
    return err.value.problems


def test_a_version_eks_does_not_offer_is_refused():
    (p,) = problems_of(settings_doc(version="1.99"))
    assert p.path == "efa-infra:eks.version" and "EKS does not offer it" in p.message and "1.36" in p.message


def test_an_unquoted_version_gets_a_hint_to_quote_it():
    (p,) = problems_of(settings_doc(version=1.30))
    assert p.path == "efa-infra:eks.version" and "quote it" in p.message and "1.3" in p.message


def test_a_version_in_extended_support_warns_that_it_costs_more():
    cfg = config.load(settings_doc(version="1.33"))
    (w,) = config.advisories(cfg, date(2026, 12, 7))
    assert w.path == "efa-infra:eks.version" and "extended-support fees" in w.message and "1.35, 1.36" in w.message
    assert config.advisories(cfg, date(2026, 7, 28)) == []  # still in standard support the day before
    assert config.advisories(config.load(settings_doc(version="1.36")), date(2026, 12, 7)) == []


def test_validate_prints_the_warning_and_still_passes(tmp_path):
    doc = yaml.safe_load(PROD.read_text())
    doc["config"]["efa-infra:eks"]["version"] = "1.33"
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run([sys.executable, "-m", "components", "validate", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    assert "warning: efa-infra:eks.version: 1.33 left EKS standard support on 2026-07-29" in out.stdout


@pytest.mark.parametrize(("nodes", "control", "ok"), [("1.36", "1.36", True), ("1.33", "1.36", True),
                                                      ("1.32", "1.36", False), ("1.36", "1.35", False)])
def test_node_group_version_stays_within_the_skew_eks_allows(nodes, control, ok):
    doc = settings_doc(version=control, nodeGroupVersion=nodes)
    if ok:
        assert config.load(doc).eks.node_group_version == nodes
    else:
        (p,) = problems_of(doc)
        assert p.path == "efa-infra:eks.nodeGroupVersion" and "efa-infra:eks.version" in p.message


def test_the_vpc_cni_minimum_is_the_first_release_with_efa_only_handling():
    (p,) = problems_of(settings_doc(vpcCniVersion="v1.18.4-eksbuild.1"))
    assert p.path == "efa-infra:eks.vpcCniVersion" and "v1.18.5" in p.message and "#3047" in p.message
    assert config.load(settings_doc(vpcCniVersion="v1.18.5-eksbuild.1")).eks.vpc_cni_version == "v1.18.5-eksbuild.1"


# --- diff --------------------------------------------------------------------------------------


def prod_with(tmp_path, name: str, **eks) -> str:
    doc = yaml.safe_load(PROD.read_text())
    doc["config"]["efa-infra:eks"].update(eks)
    path = tmp_path / name / "Pulumi.prod.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def cli_diff(base: str, changed: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "components", "diff", "--config", changed, "--base", base, "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_one_minor_up_is_an_update_in_place(tmp_path):
    result = cli_diff(prod_with(tmp_path, "a", version="1.33"), prod_with(tmp_path, "b", version="1.34"))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [(c["action"], c["name"], c["changedInputs"]) for c in doc["changes"]] == [("update", "eks-cluster", ["version"])]
    assert doc["refusedByEks"] == []
    (note,) = doc["notes"]  # the node groups, which keep their version, now lag
    assert "eks-system, p5-nodes stay behind the control plane" in note and 'eks.nodeGroupVersion: "1.34"' in note


@pytest.mark.parametrize(("old", "new", "says"), [
    ("1.33", "1.35", "EKS updates a control plane one minor version at a time. Go 1.33 -> 1.34 -> 1.35"),
    ("1.34", "1.33", "is a downgrade"),
])
def test_a_jump_or_a_downgrade_is_blocked_with_the_steps_eks_allows(tmp_path, old, new, says):
    result = cli_diff(prod_with(tmp_path, "a", version=old), prod_with(tmp_path, "b", version=new))
    assert result.returncode == 4  # the gate's code (exit_codes.GATE), not 2, a usage error
    assert says in result.stderr and "EKS refuses this change" in result.stderr
    assert says in json.loads(result.stdout)["refusedByEks"][0]


def runs(before: dict, after: dict) -> tuple[list, list]:
    out = []
    for doc in (before, after):
        run = mocks.run(settings_of(doc), "t")
        assert run.error is None, run.error
        out.append(run.resources)
    return out[0], out[1]


def fleet_doc(**eks) -> dict:
    doc = settings_doc(**eks)
    doc["fleets"] = [{"name": "gpu", "instanceType": "g6.8xlarge", "availabilityZone": "us-east-1a", "nodes": {"desired": 2}}]
    return doc


def test_node_group_version_moves_the_node_groups_and_the_lag_blocks_the_next_update():
    before, after = runs(fleet_doc(version="1.35", nodeGroupVersion="1.35"), fleet_doc(version="1.36", nodeGroupVersion="1.36"))
    assert {r.name: r.inputs["version"] for r in after if r.type == diff.NODE_GROUP} == {"eks-system": "1.36", "gpu-nodes": "1.36"}
    assert diff.eks_refusals(before, after) == [] and diff.eks_notes(before, after, diff.compare(before, after)) == []
    # Node groups left on 1.34 under a 1.35 control plane: EKS takes no further control-plane update.
    lagging, _ = runs(fleet_doc(version="1.35", nodeGroupVersion="1.34"), fleet_doc(version="1.35"))
    (refusal,) = diff.eks_refusals(lagging, after)
    assert "node groups are on 1.34" in refusal and "set eks.nodeGroupVersion to 1.35" in refusal
    # A node group is never created at another version than the cluster's, nor moved down.
    created = diff.eks_refusals([], lagging)
    assert [r.split(" would")[0] for r in created] == ["node group eks-system", "node group gpu-nodes"]
    assert all("created at 1.34, but EKS creates node groups only at the cluster's version (1.35)" in r for r in created)
    down, _ = runs(fleet_doc(version="1.36", nodeGroupVersion="1.35"), fleet_doc())
    assert any("is a downgrade, which EKS does not do to a node group" in r for r in diff.eks_refusals(after, down))


# --- a Capacity Block node group -----------------------------------------------------------------


def test_a_launch_template_change_on_a_capacity_block_node_group_is_flagged_with_the_procedure(tmp_path):
    doc = yaml.safe_load(CB.read_text())
    doc["config"]["efa-infra:fleets"][0]["rootVolumeGiB"] = 600
    path = tmp_path / "Pulumi.eks-capacity-block.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = subprocess.run([sys.executable, "-m", "components", "diff", "--config", str(path), "--base", str(CB)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "~  update   aws:eks/nodeGroup:NodeGroup  h200-nodes  (launchTemplate.version)" in result.stdout
    (note,) = [line for line in result.stdout.splitlines() if line.startswith("note: DISRUPTIVE")]
    assert "h200-nodes is on a Capacity Block" in note and "desiredSize=0" in note and "capacity-blocks-mng" in note


def test_the_same_change_on_an_on_demand_node_group_is_not_flagged():
    doc = fleet_doc()
    bigger = copy.deepcopy(doc)
    bigger["fleets"][0]["rootVolumeGiB"] = 400
    before, after = runs(doc, bigger)
    changes = diff.compare(before, after)
    assert any(c.name == "gpu-nodes" and "launchTemplate.version" in c.changed for c in changes)
    assert diff.eks_notes(before, after, changes) == []


# --- the boot check on a pinned AMI -----------------------------------------------------------------


PINNED = ROOT / "stacks" / "Pulumi.eks-pinned-ami.yaml"


def pinned_doc(**fleet) -> dict:
    doc = config.document_from_settings(config.read_stack_file(PINNED))
    doc["fleets"][0] = {k: v for k, v in {**doc["fleets"][0], **fleet}.items() if v is not None}
    return doc


@pytest.mark.parametrize("release", [None, "v20250920"])
def test_a_pinned_ami_without_a_release_that_reads_drop_ins_cannot_keep_the_boot_check(release):
    (p,) = problems_of(pinned_doc(amiRelease=release))
    assert p.path == "efa-infra:fleets[0].amiRelease"
    assert "v20251023" in p.message and "#2427" in p.message and "bootCheck: false" in p.message


def test_a_pinned_ami_keeps_its_boot_check_from_the_first_release_that_reads_drop_ins():
    from components.planning import bootstrap, plan

    cfg = config.load(pinned_doc(amiRelease="v20251023"))
    fp = plan.build(cfg).fleets[0]
    assert bootstrap.NODEADM_DROP_IN in bootstrap.user_data(fp.boot, {"name": "c"})
    # Said outright, an older AMI may only log the check.
    assert not config.load(pinned_doc(amiRelease=None, bootCheck=False)).fleets[0].boot_check


def test_an_ami_release_is_only_taken_where_it_is_used():
    (p,) = problems_of(pinned_doc(ami=None))
    assert p.path == "efa-infra:fleets[0].amiRelease" and "only used with a pinned ami" in p.message
    doc = pinned_doc()
    doc["eks"] = {}
    assert "efa-infra:fleets[0].amiRelease" in {p.path for p in problems_of(doc)}
