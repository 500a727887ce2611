"""CohortClassifier: request → cohort, first matching rule wins, else the default cohort.

Each ``match`` mapping is compiled once per policy into a list of predicates, one per condition, built by a
builder registered under the condition's key. Classification is total: every request gets exactly one cohort.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.policy.schema import Match, PolicySpec
from gateway.routing.features import RequestFeatures

Predicate = Callable[[RequestFeatures], bool]
Builder = Callable[[Any], Predicate]


@dataclass(frozen=True)
class CohortDecision:
    cohort: str
    rule: str  # e.g. "cohorts[1] billing_refund: any[1] content" or "default"


def _one_of(value: Any) -> frozenset[str]:
    values = value if isinstance(value, list) else [value]
    return frozenset(_as_text(v) for v in values)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _header(spec: Mapping[str, Any]) -> Predicate:
    wanted = [(name.lower(), _one_of(value)) for name, value in spec.items()]
    return lambda f: all(f.headers.get(name) in values for name, values in wanted)


def _metadata(spec: Mapping[str, Any]) -> Predicate:
    wanted = [(key, _one_of(value)) for key, value in spec.items()]
    return lambda f: all(key in f.metadata and _as_text(f.metadata[key]) in values for key, values in wanted)


def _field(read: Callable[[RequestFeatures], str | None]) -> Builder:
    def build(value: Any) -> Predicate:
        values = _one_of(value)
        return lambda f: read(f) in values

    return build


def _content(pattern: str) -> Predicate:
    regex = re.compile(pattern)
    return lambda f: regex.search(f.user_text) is not None


def _has_tools(value: bool) -> Predicate:
    return lambda f: f.has_tools is value


def _min_chars(n: int) -> Predicate:
    return lambda f: f.prompt_chars >= n


def _max_chars(n: int) -> Predicate:
    return lambda f: f.prompt_chars <= n


def _any(children: list[Match]) -> Predicate:
    compiled = [compile_match(c) for c in children]
    return lambda f: any(p(f) for p in compiled)


def _all(children: list[Match]) -> Predicate:
    compiled = [compile_match(c) for c in children]
    return lambda f: all(p(f) for p in compiled)


def _not(child: Match) -> Predicate:
    inner = compile_match(child)
    return lambda f: not inner(f)


MATCHERS: dict[str, Builder] = {
    "header": _header,
    "metadata": _metadata,
    "user": _field(lambda f: f.user),
    "api_key": _field(lambda f: f.api_key),
    "model": _field(lambda f: f.model),
    "content": _content,
    "has_tools": _has_tools,
    "response_format": _field(lambda f: f.response_format),
    "min_prompt_chars": _min_chars,
    "max_prompt_chars": _max_chars,
    "any": _any,
    "all": _all,
    "not_": _not,
}
"""Condition key (the schema's field name) → predicate builder. A new matcher is one entry here."""


def _conditions(match: Match) -> list[tuple[str, Predicate]]:
    return [(key, MATCHERS[key](getattr(match, key))) for key in sorted(match.model_fields_set)]


def compile_match(match: Match) -> Predicate:
    conditions = [p for _, p in _conditions(match)]
    if len(conditions) == 1:
        return conditions[0]
    return lambda f: all(p(f) for p in conditions)


def explain_match(match: Match, features: RequestFeatures) -> list[str]:
    """The conditions of ``match`` that hold for ``features``, named the way the policy names them."""
    held = []
    for key, predicate in _conditions(match):
        if not predicate(features):
            continue
        name = "not" if key == "not_" else key
        children = match.any if key == "any" else None
        if children:
            first = next(i for i, c in enumerate(children) if compile_match(c)(features))
            name = f"any[{first}]: " + ", ".join(explain_match(children[first], features))
        held.append(name)
    return held


class CohortClassifier:
    def __init__(self, policy: PolicySpec) -> None:
        self._rules = [
            (i, cohort.name, compile_match(cohort.match))
            for i, cohort in enumerate(policy.cohorts)
            if cohort.match is not None
        ]
        self._default = policy.default_cohort

    def classify(self, features: RequestFeatures) -> CohortDecision:
        for index, name, predicate in self._rules:
            if predicate(features):
                return CohortDecision(name, f"cohorts[{index}]")
        return CohortDecision(self._default, "default")
