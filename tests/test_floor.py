"""Both ends of the runtime ranges: pyproject.toml's lower ends, installed in venv-floor (requirements-floor.txt,
locked), plan every stack, make the component package's schema and report a bad stack file exactly as the
locked set (this venv) does."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from test_locks import installed, pins, requirements

ROOT = Path(__file__).resolve().parent.parent
FLOOR = ROOT / "venv-floor" / "bin" / "python"
STACKS = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))


@pytest.fixture(scope="module")
def floor() -> Path:
    if not FLOOR.exists():
        pytest.fail(f"{FLOOR} is missing: create it with the README's test command (command 2), "
                    "which installs requirements-floor.txt into venv-floor")
    return FLOOR


def run(python: Path | str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_floor_is_each_ranges_lowest_version_and_is_what_venv_floor_holds(floor):
    ranges = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    lowest = {canonicalize_name(r.name): next(s.version for s in r.specifier if s.operator == ">=") for r in ranges}
    reqs, constraints = requirements("requirements-floor.txt")
    assert constraints == ["requirements-floor.lock"]
    pinned = {canonicalize_name(r.name): next(s.version for s in r.specifier if s.operator == "==") for r in reqs}
    assert {n: Version(v) for n, v in pinned.items()} == {n: Version(v) for n, v in lowest.items()}  # 3.260 is 3.260.0
    for r in ranges:
        assert r.specifier.contains(pinned[canonicalize_name(r.name)]), r
    assert installed(floor) == pins("requirements-floor.lock")
    assert {n: pins("requirements-floor.lock")[n] for n in pinned} == pinned


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_plans_the_same_at_the_floor(floor, stack):
    at_floor, locked = (run(python, "-m", "components", "plan", "--stack", stack, "--json") for python in (floor, sys.executable))
    assert at_floor.returncode == locked.returncode == 0, at_floor.stderr
    assert at_floor.stdout == locked.stdout


def test_the_component_package_and_a_bad_stack_file_are_the_same_at_the_floor(floor, tmp_path):
    schema = [run(python, "tools/package_schema.py") for python in (floor, sys.executable)]
    assert schema[0].returncode == schema[1].returncode == 0, schema[0].stderr
    assert schema[0].stdout == schema[1].stdout
    bad = tmp_path / "Pulumi.bad.yaml"
    text = (ROOT / "stacks" / "Pulumi.dev.yaml").read_text()
    bad.write_text(text.replace("desired: 2", "desired: 9", 1).replace("  aws:region:", "  efa-infra:instanceType: x\n  aws:region:", 1))
    reports = [run(python, "-m", "components", "validate", str(bad)) for python in (floor, sys.executable)]
    assert reports[0].returncode == reports[1].returncode == 1
    assert (reports[0].stdout, reports[0].stderr) == (reports[1].stdout, reports[1].stderr)
    assert "efa-infra:fleets[0].nodes: need min <= desired <= max" in reports[0].stdout
    assert "did you mean 'efa-infra:instanceTypes'?" in reports[0].stdout
