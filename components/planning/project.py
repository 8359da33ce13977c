"""Where the user's Pulumi project is: the CLI reads stack files from its `stacks/` folder, also when
efa-infra is installed as a package (whose own folder, in site-packages, holds no stacks)."""

from __future__ import annotations

from pathlib import Path


def stacks_dir(start: Path | None = None) -> Path:
    """`stacks/` of the nearest directory from `start` (default: the current one) upwards that holds a
    Pulumi.yaml, as the Pulumi CLI finds its project; `start/stacks` when none does."""
    here = (start or Path.cwd()).resolve()
    project = next((d for d in (here, *here.parents) if (d / "Pulumi.yaml").is_file()), here)
    return project / "stacks"
