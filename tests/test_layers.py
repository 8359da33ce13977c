"""The three layers stay layers: pure planning imports no Pulumi, and the Pulumi components never import the
offline tools built on them. Each check runs in a fresh interpreter, so nothing another test imported counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules(package: str) -> list[str]:
    """Every module of a package under components/, from the files on disk."""
    base = ROOT.joinpath(*package.split("."))
    names = []
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def import_all(names: list[str], prelude: str = "") -> dict:
    """Import `names` in a fresh interpreter; what it then holds of sys.modules."""
    probe = prelude + f"""
import importlib, json, sys
for name in {names!r}:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


# Makes pulumi and its SDKs unimportable, as on a machine that has only the planning layer's dependencies.
NO_PULUMI = """
import sys
class NoPulumi:
    def find_spec(self, name, path=None, target=None):
        if name == "pulumi" or name.startswith(("pulumi.", "pulumi_")):
            raise ImportError(f"{name} is not importable here: components/planning must not need it")
        return None
sys.meta_path.insert(0, NoPulumi())
"""


def test_the_planning_layer_imports_without_pulumi():
    names = modules("components.planning")
    assert "components.planning.config.loading" in names and "components.planning.launch.kubernetes" in names
    loaded = import_all(names, NO_PULUMI)
    assert set(names) <= loaded
    assert not [m for m in loaded if m == "pulumi" or m.startswith(("pulumi.", "pulumi_"))]


def test_the_pulumi_components_never_import_the_offline_tools():
    names = modules("components.resources")
    assert "components.resources.stack" in names
    loaded = import_all(names)
    assert set(names) <= loaded
    assert not [m for m in loaded if m.startswith("components.offline")]
