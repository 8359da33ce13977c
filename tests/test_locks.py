"""Installs that reproduce: each range file is pinned by its lock, and the suite runs on the locked set."""

from __future__ import annotations

import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCKS = {"requirements.txt": "requirements.lock", "requirements-test.txt": "requirements-test.lock",
         "requirements-checkov.txt": "requirements-checkov.lock", "requirements-floor.txt": "requirements-floor.lock"}


def pins(lock: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / lock).read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and not any(c in version for c in "<>=!~,;"), f"{lock}: {line!r} is not an exact pin"
            out[canonicalize_name(name)] = version
    return out


def requirements(path: str) -> tuple[list[Requirement], list[str]]:
    """The file's requirements (and those of the files it names with -r), and the locks it constrains with (-c)."""
    reqs, constraints = [], []
    for raw in (ROOT / path).read_text().splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-r "):
            more, cons = requirements(line[3:].strip())
            reqs += more
            constraints += cons
        elif line.startswith("-c "):
            constraints.append(line[3:].strip())
        elif line in (".", "-e ."):  # this repository's package: its dependencies are pyproject.toml's
            reqs += [Requirement(r) for r in PROJECT["dependencies"]]
        else:
            reqs.append(Requirement(line))
    return reqs, constraints


@pytest.mark.parametrize("ranges, lock", sorted(LOCKS.items()))
def test_every_requirement_is_pinned_within_its_range(ranges, lock):
    reqs, constraints = requirements(ranges)
    assert lock in constraints, f"{ranges} does not constrain itself with {lock}"
    pinned = pins(lock)
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} ({ranges}) has no pin in {lock}"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{lock} pins {req.name} {pinned[name]}, outside {req} ({ranges})"


def test_the_runtime_ranges_live_in_pyproject_only():
    """requirements.txt installs the package, whose metadata states the ranges: no second copy to drift."""
    lines = [raw.split(" #")[0].strip() for raw in (ROOT / "requirements.txt").read_text().splitlines()]
    assert [line for line in lines if line and not line.startswith("#")] == ["-c requirements.lock", "-e ."]
    assert {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]} <= set(pins("requirements.lock"))


def test_runtime_and_test_locks_agree():
    runtime, test = pins("requirements.lock"), pins("requirements-test.lock")
    assert {n: v for n, v in runtime.items() if n in test and test[n] != v} == {}
    # The test venv holds the whole runtime but the policy pack's extra, which the suite has too.
    assert set(runtime) <= set(test)


def installed(python: Path) -> dict[str, str]:
    listing = subprocess.run([str(python), "-m", "pip", "list", "--format", "freeze", "--exclude", "pip",
                              "--exclude", "setuptools", "--exclude", "wheel"], capture_output=True, text=True, check=True)
    return {canonicalize_name(n): v.split("+")[0] for n, _, v in (line.partition("==") for line in listing.stdout.split())}


def test_the_suite_runs_on_the_locked_set():
    """What passes here is what a fresh install from the locks gets: the venv running the tests is the lock."""
    here = {canonicalize_name(d.metadata["Name"]): d.version.split("+")[0] for d in metadata.distributions()}
    # The package itself (requirements.txt installs this tree, editable) is not pinned: it is what is tested.
    here = {n: v for n, v in here.items() if n not in {"pip", "setuptools", "wheel", canonicalize_name(PROJECT["name"])}}
    assert here == pins("requirements-test.lock")


def test_checkov_runs_on_its_locked_set():
    assert installed(ROOT / "venv-checkov" / "bin" / "python") == pins("requirements-checkov.lock")
