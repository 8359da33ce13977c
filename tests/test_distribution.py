"""The distribution: a wheel built from the tree carries the code and every data file the program reads, and
its `efa-infra` command, installed in a fresh venv and run in a user's project, prints the same plan as the
checkout. (The fresh venv borrows this venv's dependencies, the locked set, instead of downloading them.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of what the build reads: setuptools writes build/ and *.egg-info beside the sources.
    tree, out = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree)
    shutil.copytree(ROOT / "components", tree / "components", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(tree)], check=True, timeout=300, capture_output=True)
    (built,) = out.glob("efa_infra-*.whl")
    return built


def test_the_wheel_carries_every_file_the_program_reads(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "components").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}
    assert tree - names == set()
    assert {"components/data/checkov-skips.yaml", "components/manifests/training-operator/kustomization.yaml",
            "components/data/instance_types.json"} <= names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "efa-infra = components.__main__:console" in zipfile.ZipFile(wheel).read(entry).decode()


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, Path, Path]:
    """A fresh venv with the wheel installed, its site-packages, and a user's project: its stacks, and no
    components/ of its own."""
    tmp_path = tmp_path_factory.mktemp("installed")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", str(wheel)], check=True, timeout=300, capture_output=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "locked-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    project = tmp_path / "project"
    (project / "stacks").mkdir(parents=True)
    shutil.copy(ROOT / "Pulumi.yaml", project)
    shutil.copy(ROOT / "stacks" / "Pulumi.dev.yaml", project / "stacks")
    return venv, site, project


def test_the_installed_command_plans_as_the_checkout(installed):
    venv, site, project = installed
    for args in (["plan", "--stack", "dev"], ["plan", "--stack", "dev", "--json"]):
        installed_run = subprocess.run([str(venv / "bin" / "efa-infra"), *args], cwd=project / "stacks", capture_output=True,
                                       text=True, timeout=300)
        assert installed_run.returncode == 0, installed_run.stderr
        checkout = subprocess.run([sys.executable, "-m", "components", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=300)
        assert installed_run.stdout == checkout.stdout
        assert "g6.8xlarge" in installed_run.stdout
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import components; print(components.__file__)"],
                           cwd=project, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(site))


def test_the_installed_command_diffs_a_change_against_the_projects_last_commit(installed, tmp_path):
    """`efa-infra diff` (base: HEAD) in a user's git repository of stack files: the committed file planned by the
    installed program, against the file as edited."""
    venv, _, project = installed
    repo = tmp_path / "repo"
    shutil.copytree(project, repo)
    git = lambda *a: subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *a],  # noqa: E731
                                    capture_output=True, text=True, check=True)
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "dev")
    stack = repo / "stacks" / "Pulumi.dev.yaml"
    stack.write_text(stack.read_text().replace("desired: 2", "desired: 1", 1))
    result = subprocess.run([str(venv / "bin" / "efa-infra"), "diff", "--stack", "dev", "--json"], cwd=repo,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["base"] == "stacks/Pulumi.dev.yaml at HEAD"
    updated = {(c["type"], c["name"]) for c in doc["changes"] if c["action"] == "update"}
    assert ("aws:autoscaling/group:Group", "gpu-asg") in updated
    assert doc["summary"]["replace"] == doc["summary"]["delete"] == doc["summary"]["create"] == 0
