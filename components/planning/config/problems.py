"""Problems with a config: each names its key path, the bad value and what would be valid; ConfigError
lists them all at once. Light on purpose (no pydantic): the CLI catches ConfigError in every command."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    path: str  # e.g. efa-infra:fleets[0].nodes.max
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem], source: str = "stack config"):
        self.problems = problems
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{len(self.problems)} problem{'s' * (len(self.problems) != 1)} in {self.source}:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)
