"""BoundedValidator: Draft 2020-12 validation of a client's JSON Schema with bounded work, on the event loop.

A schema from a request (``response_format``, a tool's ``parameters``) is hostile input. Python's ``re`` backtracks:
``(?:[a-z]?){1000}!`` takes seconds on a two-letter string, and a match never releases the GIL, so neither a thread
nor a timeout can stop it. Three bounds keep one evaluation cheap, whatever the schema says:

- Regexes (``pattern``, ``patternProperties`` and the ``additionalProperties`` that depends on them) run on RE2,
  which matches in time linear in the text and compiles within a small memory cap. Before it runs, each match is
  charged its worst case (program size times the text's bytes) against the evaluation's ``regex_steps``. A pattern
  RE2 cannot run (lookarounds, backreferences) makes the check n/a.
- Every keyword checks the evaluation's deadline before it runs, which bounds schemas that fan out (``anyOf`` of
  ``$ref`` of ``anyOf`` ...) or answers that are simply large.
- The schema is confined to itself before it is compiled (:func:`confine`): jsonschema validates any part that
  names a dialect (``$schema``) or is reached through another resource (``$id``, a reference that is not ``#...``)
  with its stock classes, whose regexes run on ``re``.

An evaluation that runs out raises :class:`CheckBudgetExceeded`; evaluators count it as n/a, never as a failure.
``format`` is not checked (no format checker), so ``format: regex`` compiles nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple

import jsonschema  # type: ignore[import-untyped]
import re2  # type: ignore[import-untyped]

RE2_MAX_MEM = 256 * 1024
"""Bytes one compiled pattern may use (program and DFA cache); re2 keeps its 128 most recent patterns."""

Keyword = Callable[[Any, Any, Any, Any], Any]


class CheckBudgetExceeded(Exception):
    """The evaluation ran out of time or regex steps: its outcome is unknown (n/a)."""


class UnsupportedPattern(Exception):
    """A ``pattern`` RE2 cannot run (lookaround, backreference, ...): the schema cannot be applied."""


@dataclass(slots=True)
class CheckBudget:
    """What one evaluation may still spend: a deadline in ``time.thread_time()`` (the loop thread's CPU time, so a
    busy machine, whose other processes take the core away, does not turn good answers into n/a) and RE2 steps
    (program size times bytes)."""

    deadline: float
    regex_steps: int

    def spend(self, regex_steps: int = 0) -> None:
        if time.thread_time() > self.deadline:
            raise CheckBudgetExceeded("the check ran out of its time budget")
        self.regex_steps -= regex_steps
        if self.regex_steps < 0:
            raise CheckBudgetExceeded("the schema's regexes would run past their budget on this answer")


_BUDGET: ContextVar[CheckBudget] = ContextVar("schema_check_budget")


@contextmanager
def spending(budget: CheckBudget) -> Iterator[None]:
    """Validation inside this block spends ``budget`` (outside any such block, a keyword raises LookupError)."""
    token = _BUDGET.set(budget)
    try:
        yield
    finally:
        _BUDGET.reset(token)


def _re2_options() -> Any:
    options = re2.Options()
    options.max_mem = RE2_MAX_MEM
    options.log_errors = False  # a client's bad pattern is not worth a line on stderr
    options.never_capture = True
    return options


_RE2_OPTIONS = _re2_options()


def _search(pattern: str, text: str) -> bool:
    """``pattern`` found in ``text`` (like ``re.search``), after its worst-case cost was charged to the budget."""
    try:
        compiled = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise UnsupportedPattern(f"pattern {pattern!r} cannot run on RE2: {why}") from None
    width = 1 if text.isascii() else 4  # RE2 runs over UTF-8 bytes
    _BUDGET.get().spend(compiled.programsize * (len(text) * width + 1))
    return compiled.search(text) is not None


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name, value in instance.items():
            if _search(pattern, name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_names(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> Iterator[str]:
    properties = schema.get("properties", {})
    either = "|".join(f"(?:{p})" for p in schema.get("patternProperties", {}))
    for name in instance:
        if name not in properties and not (either and _search(either, name)):
            yield name


def _additional_properties(validator: Any, allowed: Any, instance: Any, schema: Any) -> Iterator[Any]:
    """jsonschema's ``additionalProperties``, with the ``patternProperties`` it consults matched on RE2."""
    if not validator.is_type(instance, "object"):
        return
    extras = set(_additional_names(instance, schema))
    if validator.is_type(allowed, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], allowed, path=extra)
    elif not allowed and extras:
        names = ", ".join(repr(extra) for extra in sorted(extras, key=str))
        if "patternProperties" in schema:
            patterns = ", ".join(repr(p) for p in sorted(schema["patternProperties"]))
            verb = "does" if len(extras) == 1 else "do"
            yield jsonschema.ValidationError(f"{names} {verb} not match any of the regexes: {patterns}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield jsonschema.ValidationError(f"Additional properties are not allowed ({names} {verb} unexpected)")


def _metered(keyword: Keyword) -> Keyword:
    def run(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _BUDGET.get().spend()
        return keyword(validator, value, instance, schema)

    return run


_KEYWORDS: dict[str, Keyword] = {
    **jsonschema.Draft202012Validator.VALIDATORS,
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}
# No ``version``: the class is not registered as the validator of any ``$schema``, so nothing global changes.
BoundedValidator: Any = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, validators={name: _metered(keyword) for name, keyword in _KEYWORDS.items()}
)


class Confined(NamedTuple):
    schema: Any  # None when ``problem`` is set
    problem: str | None
    nodes: int  # objects in the schema, a measure of what compiling and checking it costs


def confine(schema: Any) -> Confined:
    """``schema`` ready for :data:`BoundedValidator`, or why it cannot be confined to itself.

    The root's ``$schema`` and ``$id`` only name its dialect and base, so they are dropped (every schema is read as
    Draft 2020-12, its own references resolving inside it); anywhere below the root they would hand that part to a
    stock validator class, so they are refused, as are references to other resources.
    """
    if not isinstance(schema, Mapping):
        return Confined(schema, None, 0)
    root = {key: value for key, value in schema.items() if key not in ("$schema", "$id")}
    problem, nodes = _escape(root)
    return Confined(None if problem is not None else root, problem, nodes)


def _escape(root: Mapping[str, Any]) -> tuple[str | None, int]:
    """The first part of ``root`` that would be validated outside BoundedValidator, if any, and how many objects
    ``root`` holds (a walk, no recursion). Data inside ``const`` or ``enum`` is walked too: a false alarm there only
    makes the check n/a."""
    pending: list[Any] = [root]
    nodes = 0
    unevaluated = by_pattern = False
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        if not isinstance(node, Mapping):
            continue
        nodes += 1
        for key, value in node.items():
            if isinstance(value, str) and key in ("$schema", "$id"):
                return f"'{key}' below the root is not supported", nodes
            if isinstance(value, str) and key in ("$ref", "$dynamicRef") and not value.startswith("#"):
                return f"Unresolvable: '{key}' {value!r} leaves the schema (only '#...' is followed)", nodes
            unevaluated = unevaluated or key == "unevaluatedProperties"
            by_pattern = by_pattern or key == "patternProperties"
            pending.append(value)
    if unevaluated and by_pattern:
        return "'unevaluatedProperties' together with 'patternProperties' is not supported", nodes
    return None, nodes
