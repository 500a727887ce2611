"""Read a policy file into a validated, versioned :class:`LoadedPolicy`, or raise :class:`PolicyError`.

Loading never half-succeeds: syntax, schema and cross-reference problems are all collected and reported together
with ``file:line:col``, and the caller (startup or reload) keeps whatever policy it had.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

from pydantic import ValidationError

from gateway.policy.checks import check_policy
from gateway.policy.errors import PolicyError, PolicyIssue
from gateway.policy.schema import PolicySpec
from gateway.policy.yamlpos import Path, Position, PositionedDocument, YamlSyntaxError, load_positioned


@dataclass(frozen=True)
class LoadedPolicy:
    spec: PolicySpec
    path: str
    digest: str  # first 12 hex digits of the file's sha256

    @property
    def version(self) -> str:
        """What headers, spans and metrics call the policy version: ``revision/digest`` or the digest."""
        return f"{self.spec.revision}/{self.digest}" if self.spec.revision else self.digest


def load_policy(path: str | FsPath) -> LoadedPolicy:
    name = str(path)
    try:
        text = FsPath(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(name, [PolicyIssue((), f"cannot read policy: {exc}", _origin())]) from None
    return parse_policy(text, name)


def parse_policy(text: str, filename: str = "<policy>") -> LoadedPolicy:
    try:
        doc = load_positioned(text)
    except YamlSyntaxError as exc:
        raise PolicyError(filename, [PolicyIssue((), str(exc), exc.position)]) from None
    if not isinstance(doc.data, dict):
        raise PolicyError(filename, [PolicyIssue((), "a policy is a YAML mapping (version, models, ...)", _origin())])
    try:
        spec = PolicySpec.model_validate(doc.data)
    except ValidationError as exc:
        raise PolicyError(filename, _schema_issues(exc, doc)) from None
    problems = check_policy(spec)
    if problems:
        raise PolicyError(filename, [PolicyIssue(p, msg, doc.locate(p)) for p, msg in problems])
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return LoadedPolicy(spec=spec, path=filename, digest=digest)


def _origin() -> Position:
    return Position(1, 1)


def _schema_issues(exc: ValidationError, doc: PositionedDocument) -> list[PolicyIssue]:
    """One issue per (path, message); a value that fits no branch of a union gets one merged message."""
    by_path: dict[Path, list[tuple[str, bool]]] = {}
    for error in exc.errors(include_url=False):
        path = _data_path(error["loc"], doc.data)
        entry = (_message(error), error["type"] == "extra_forbidden")
        if entry not in by_path.setdefault(path, []):
            by_path[path].append(entry)
    issues: list[PolicyIssue] = []
    for path, entries in by_path.items():
        kinds = [m.removeprefix(_TYPE_PREFIX) for m, _ in entries if m.startswith(_TYPE_PREFIX)]
        if len(kinds) > 1:
            merged = f"{_TYPE_PREFIX}{', '.join(kinds[:-1])} or {kinds[-1]}"
            entries = [(merged, False), *((m, k) for m, k in entries if not m.startswith(_TYPE_PREFIX))]
        for message, at_key in entries:
            issues.append(PolicyIssue(path, message, doc.locate(path, at_key=at_key)))
    return issues


_TYPE_PREFIX = "Input should be a valid "


def _data_path(loc: tuple[Any, ...], data: Any) -> Path:
    """Pydantic's ``loc`` with union-branch tags dropped, so it names keys and indexes of the YAML document."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part not in node and not _is_tag(part):
            path.append(part)  # a missing or unknown key: name it even though it has no position
            node = None
    return tuple(path)


def _is_tag(part: str) -> bool:
    return any(ch in part for ch in "[]()-") or part in {"str", "int", "float", "bool", "list", "dict"}


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing required key"
    message: str = error["msg"]
    return message.removeprefix("Value error, ")
