"""Cohort conditions compiled into predicates: plain (true/false) and three-valued (true/false/unknown).

Each condition key of a ``match`` mapping (the schema's field name) has a builder in :data:`MATCHERS`; a mapping
holds when all its conditions do. ``semantic`` conditions need the request's vector, so a match that has any is
compiled by :func:`compile_tri` into Kleene logic, where ``None`` is unknown: ``any`` is true when a child is true,
false when all are false, else unknown; ``all`` the other way round; ``not`` keeps unknown unknown. Subtrees
without semantic conditions are compiled plain and wrapped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from gateway.policy.schema import Match, SemanticSpec
from gateway.routing.features import RequestFeatures
from gateway.routing.semantic import child_paths
from gateway.routing.semantic_eval import Evaluation, SemanticLeaf

Predicate = Callable[[RequestFeatures], bool]
Builder = Callable[[Any], Predicate]
TriPredicate = Callable[[RequestFeatures, Evaluation], bool | None]
"""True, False, or None for unknown (a semantic condition whose vector is not known yet)."""


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


def _no_vector(spec: SemanticSpec) -> Predicate:
    """A ``semantic`` condition evaluated without a vector (plain boolean use): it does not hold."""
    return lambda f: False


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
    "semantic": _no_vector,
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


def contains_semantic(match: Match) -> bool:
    return match.semantic is not None or any(contains_semantic(child) for child, _ in child_paths(match, ""))


def _tri_any(children: list[TriPredicate]) -> TriPredicate:
    def run(f: RequestFeatures, e: Evaluation) -> bool | None:
        unknown = False
        for child in children:
            value = child(f, e)
            if value:
                return True
            unknown = unknown or value is None
        return None if unknown else False

    return run


def _tri_all(children: list[TriPredicate]) -> TriPredicate:
    def run(f: RequestFeatures, e: Evaluation) -> bool | None:
        unknown = False
        for child in children:
            value = child(f, e)
            if value is False:
                return False
            unknown = unknown or value is None
        return None if unknown else True

    return run


def _tri_not(child: TriPredicate) -> TriPredicate:
    def run(f: RequestFeatures, e: Evaluation) -> bool | None:
        value = child(f, e)
        return None if value is None else not value

    return run


def _plain(predicate: Predicate) -> TriPredicate:
    return lambda f, e: predicate(f)


def _leaf(leaf: SemanticLeaf) -> TriPredicate:
    return lambda f, e: e.leaf(leaf)


def compile_tri(match: Match, path: str, make_leaf: Callable[[str, SemanticSpec], SemanticLeaf]) -> TriPredicate:
    """``match`` in three-valued logic; ``make_leaf`` compiles each semantic condition, given its path."""
    if not contains_semantic(match):
        return _plain(compile_match(match))
    children = {child_path: child for child, child_path in child_paths(match, path)}
    parts: list[TriPredicate] = []
    for key in sorted(match.model_fields_set):
        if key == "semantic":
            assert match.semantic is not None
            parts.append(_leaf(make_leaf(f"{path}.semantic", match.semantic)))
        elif key in ("any", "all"):
            compiled = [compile_tri(c, p, make_leaf) for p, c in children.items() if p.startswith(f"{path}.{key}[")]
            parts.append(_tri_any(compiled) if key == "any" else _tri_all(compiled))
        elif key == "not_":
            parts.append(_tri_not(compile_tri(children[f"{path}.not"], f"{path}.not", make_leaf)))
        else:
            parts.append(_plain(MATCHERS[key](getattr(match, key))))
    return parts[0] if len(parts) == 1 else _tri_all(parts)
