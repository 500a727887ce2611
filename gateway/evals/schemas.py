"""SchemaCache: client JSON Schemas compiled once per distinct schema and applied with bounded work, for the
``json_schema`` and ``tool_call_valid`` evaluators and the promotion scorer.

The schemas come from requests, so both steps are bounded: a schema over ``max_schema_bytes`` is not compiled, and
each check spends a :class:`~gateway.evals.bounded_validator.CheckBudget` (time and regex steps); see
:mod:`gateway.evals.bounded_validator` for why and how.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import orjson
import referencing

from gateway.evals.bounded_validator import BoundedValidator, CheckBudget, CheckBudgetExceeded, confine, spending

BUDGET_S = 0.025
"""Seconds one evaluation may spend validating (a typical answer takes well under a millisecond)."""
REGEX_STEPS = 1_500_000
"""RE2 steps (program size times text bytes) one evaluation may spend: about 10 ms in RE2's slowest mode."""
MAX_SCHEMA_BYTES = 64 * 1024
"""Larger schemas are not checked (compiling one costs time in proportion to its size)."""
METASCHEMA_CHECK_NODES = 24
"""Schemas of up to this many objects are checked against the Draft 2020-12 metaschema first (jsonschema spends
about 2 ms an object on it, once per distinct schema); larger ones are used as sent, and a broken part makes the
check n/a when validation reaches it."""


class SchemaCache:
    """Compiled Draft 2020-12 validators keyed by the schema's canonical JSON (sorted keys), least recently used out.

    The same response or tool schema comes with request after request, and compiling it costs far more than
    validating a small answer against it. A schema that is itself invalid is cached too, as its error message.
    """

    def __init__(
        self,
        maxsize: int = 256,
        *,
        budget_s: float = BUDGET_S,
        regex_steps: int = REGEX_STEPS,
        max_schema_bytes: int = MAX_SCHEMA_BYTES,
    ) -> None:
        self.budget_s = budget_s
        self.regex_steps = regex_steps
        self.max_schema_bytes = max_schema_bytes
        self._compile: Callable[[str], tuple[Any, str | None]] = functools.lru_cache(maxsize=maxsize)(self._build)

    def budget(self) -> CheckBudget:
        """A fresh budget for one evaluation, to share between its checks (e.g. every tool call of one answer)."""
        return CheckBudget(time.thread_time() + self.budget_s, self.regex_steps)

    @staticmethod
    def _build(canonical: str) -> tuple[Any, str | None]:
        schema, problem, nodes = confine(orjson.loads(canonical))
        if problem is not None:
            return None, problem
        try:
            if nodes <= METASCHEMA_CHECK_NODES:
                # No format checker: it would compile every pattern with `re` (slow for long ones); RE2 compiles
                # each when validation first needs it, and one that does not compile makes the check n/a.
                jsonschema.Draft202012Validator.check_schema(schema, format_checker=None)
        except jsonschema.SchemaError as exc:
            return None, exc.message
        # An empty registry: a remote $ref is an error, never fetched (jsonschema's default still fetches over HTTP).
        return BoundedValidator(schema, registry=referencing.Registry()), None

    def first_error(
        self, schema: Any, instance: Any, budget: CheckBudget | None = None
    ) -> tuple[str | None, str | None]:
        """(the first validation error or None, None), or (None, why the schema cannot be applied or checked).

        ``budget`` defaults to a fresh one, started once the schema is compiled; running out of it is a reason the
        check cannot be applied (n/a).
        """
        try:
            canonical = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
            if len(canonical) > self.max_schema_bytes:
                return None, f"the schema is over {self.max_schema_bytes} bytes"
            validator, schema_error = self._compile(canonical.decode())
            if schema_error is not None:
                return None, schema_error
            with spending(budget or self.budget()):
                error = next(iter(validator.iter_errors(instance)), None)
        except CheckBudgetExceeded as exc:
            return None, str(exc)
        # A client-supplied schema may still break validation (unresolvable $ref, recursion): the check cannot run.
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"
        return (None if error is None else f"{error.json_path}: {error.message}"), None
