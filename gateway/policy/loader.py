"""Read a policy file into a validated, versioned :class:`LoadedPolicy`, or raise :class:`PolicyError`.

Loading never half-succeeds: syntax, schema and cross-reference problems are all collected and reported together
with ``file:line:col``, and the caller (startup or reload) keeps whatever policy it had. Reading and parsing are
bounded (file size here, YAML expansion and nesting in :mod:`gateway.policy.yamlpos`), so a hostile file costs at
most a second or so of CPU, which a reload spends off the event loop. A ``semantic`` rule's ``examples_file`` is
read and checked too (bounded the same way), relative to the policy file's directory; embedding its examples is
not loading's business (:func:`gateway.routing.semantic.prepare`).
"""

from __future__ import annotations

import hashlib
import os
import stat
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


MAX_POLICY_BYTES = 4 * 1024 * 1024
"""A policy is a few KiB; a file larger than this is refused before it is parsed."""


def load_policy(path: str | FsPath) -> LoadedPolicy:
    return parse_policy_bytes(read_policy_bytes(path), str(path))


def read_policy_bytes(path: str | FsPath) -> bytes:
    """The file's bytes, or :class:`PolicyError` if it cannot be read, is not a regular file (a FIFO or a device
    would block or never end) or is larger than :data:`MAX_POLICY_BYTES`."""
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise _unreadable(name, "not a regular file")
            data = file.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise _unreadable(name, str(exc)) from None
    if len(data) > MAX_POLICY_BYTES:
        raise _too_large(name)
    return data


def policy_digest(data: bytes) -> str:
    """What :attr:`LoadedPolicy.digest` is for a file holding ``data``: the first 12 hex digits of its sha256."""
    return hashlib.sha256(data).hexdigest()[:12]


def parse_policy_bytes(data: bytes, filename: str = "<policy>") -> LoadedPolicy:
    if len(data) > MAX_POLICY_BYTES:
        raise _too_large(filename)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        where = Position(data.count(b"\n", 0, exc.start) + 1, exc.start - line_start + 1)
        raise PolicyError(filename, [PolicyIssue((), "not UTF-8 text", where)]) from None
    return _parse(text, filename, policy_digest(data))


def parse_policy(text: str, filename: str = "<policy>") -> LoadedPolicy:
    return parse_policy_bytes(text.encode("utf-8"), filename)


def _parse(text: str, filename: str, digest: str) -> LoadedPolicy:
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
    problems = check_policy(spec, FsPath(filename).parent)  # examples files are next to the policy file
    if problems:
        raise PolicyError(filename, [PolicyIssue(p, msg, doc.locate(p)) for p, msg in problems])
    return LoadedPolicy(spec=spec, path=filename, digest=digest)


def _unreadable(filename: str, why: str) -> PolicyError:
    return PolicyError(filename, [PolicyIssue((), f"cannot read policy: {why}", _origin())])


def _too_large(filename: str) -> PolicyError:
    limit = MAX_POLICY_BYTES // (1024 * 1024)
    return PolicyError(filename, [PolicyIssue((), f"policy file larger than {limit} MiB: refused unread", _origin())])


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
