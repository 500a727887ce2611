"""Policy errors that name the file, line and column an SRE has to fix."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.policy.yamlpos import Path, Position


def format_path(path: Path) -> str:
    """``("routes", "billing", "fallback", 1)`` → ``routes.billing.fallback[1]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True)
class PolicyIssue:
    path: Path
    message: str
    position: Position

    def render(self, filename: str) -> str:
        where = format_path(self.path)
        prefix = f"{where}: " if where else ""
        return f"{filename}:{self.position.line}:{self.position.col}: {prefix}{self.message}"


class PolicyError(Exception):
    """A policy that must not be loaded; ``str()`` is one ``PATH:LINE:COL: message`` line per issue."""

    def __init__(self, filename: str, issues: list[PolicyIssue]) -> None:
        self.filename = filename
        self.issues = issues
        super().__init__("\n".join(issue.render(filename) for issue in issues))
