"""The suggested policy as text: the policy file with only its thresholds changed, and the diff.

The file is edited, not rewritten from the parsed policy, so its comments, order and layout stay. The YAML's value
positions (:mod:`gateway.policy.yamlpos`) say where each threshold is: a written one is replaced where it stands;
for a rule that relied on the default, ``threshold:`` is inserted: as the first key of a flow mapping
(``{threshold: 0.55, model: ...}``), or as a line of its own above a block mapping's first key, at its indentation.
The result is parsed again and must be the policy with exactly those thresholds changed; anything else (a rule
shared through a YAML alias, say) is an :class:`EditError`, never a file that says something else.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

import numpy as np

from gateway.policy import PolicyError, PolicySpec, parse_policy
from gateway.policy.yamlpos import YamlSyntaxError, load_positioned

_SCALAR = re.compile(r"[^\s,}\]#]+")
_STEP = re.compile(r"(\w+)(?:\[(\d+)\])?")


class EditError(Exception):
    """The policy's text could not be edited to hold the suggested thresholds; the message says which and why."""


def yaml_path(rule_path: str) -> tuple[str | int, ...]:
    """``cohorts[2].match.any[1].semantic`` → ``("cohorts", 2, "match", "any", 1, "semantic")``."""
    path: list[str | int] = []
    for step in rule_path.split("."):
        found = _STEP.fullmatch(step)
        if found is None:
            raise ValueError(f"not a rule path: {rule_path!r}")
        path.append(found[1])
        if found[2] is not None:
            path.append(int(found[2]))
    return tuple(path)


def format_threshold(value: float) -> str:
    """The shortest decimal that reads back as ``value``, positional (YAML 1.1 reads ``1e-07`` as a string)."""
    return np.format_float_positional(float(value), trim="0")


def edit_thresholds(text: str, thresholds: Mapping[str, float], expected: PolicySpec) -> str:
    """``text`` with the semantic condition at each path of ``thresholds`` set to that threshold; ``expected`` is
    the policy the result must parse to."""
    if not thresholds:
        return text
    try:
        doc = load_positioned(text)
    except YamlSyntaxError as exc:
        raise EditError(f"cannot read the policy's YAML again: {exc}") from None
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, int, str, str]] = []  # (line, column, what: replace|inline|above, new text), 1-based
    for rule_path, value in thresholds.items():
        path = yaml_path(rule_path)
        written = format_threshold(value)
        if (*path, "threshold") in doc.positions:
            line, column = doc.positions[(*path, "threshold")]
            edits.append((line, column, "replace", written))
            continue
        if path not in doc.positions:
            raise EditError(f"{rule_path}: not found in the policy's text")
        line, column = doc.positions[path]
        current = lines[line - 1] if line <= len(lines) else ""
        if current[column - 1 : column] == "{":
            edits.append((line, column, "inline", f"threshold: {written}, "))
        elif not current[: column - 1].strip():
            edits.append((line, column, "above", f"{' ' * (column - 1)}threshold: {written}"))
        else:
            raise EditError(f"{rule_path}: cannot place a threshold in line {line}")
    for line, column, what, new in sorted(edits, reverse=True):
        lines = _apply(lines, line, column, what, new)
    edited = "".join(lines)
    _verify(edited, thresholds, expected)
    return edited


def _apply(lines: list[str], line: int, column: int, what: str, new: str) -> list[str]:
    current = lines[line - 1]
    if what == "above":
        ending = current[len(current.rstrip("\r\n")) :] or "\n"
        return [*lines[: line - 1], new + ending, *lines[line - 1 :]]
    start = column - 1
    if what == "inline":
        changed = current[: start + 1] + new + current[start + 1 :]
    else:
        token = _SCALAR.match(current, start)
        if token is None:
            raise EditError(f"line {line}: no threshold value at column {column}")
        changed = current[:start] + new + current[token.end() :]
    return [*lines[: line - 1], changed, *lines[line:]]


def _verify(edited: str, thresholds: Mapping[str, float], expected: PolicySpec) -> None:
    try:
        parsed = parse_policy(edited).spec
    except PolicyError as exc:
        raise EditError(f"the edited policy does not load:\n{exc}") from None
    if parsed != expected:
        listed = ", ".join(f"{path} = {format_threshold(v)}" for path, v in thresholds.items())
        raise EditError(f"the edited text does not hold exactly the suggested thresholds; set them by hand: {listed}")


def unified_diff(before: str, after: str, before_name: str, after_name: str) -> str:
    """A unified diff of two texts, every line ending in a newline (a last line without one gets it)."""
    old = [line if line.endswith("\n") else line + "\n" for line in before.splitlines(keepends=True)]
    new = [line if line.endswith("\n") else line + "\n" for line in after.splitlines(keepends=True)]
    return "".join(difflib.unified_diff(old, new, before_name, after_name))
