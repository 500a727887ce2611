"""SchemaCache: JSON Schema validators compiled once per distinct schema, for the ``json_schema`` evaluator and the
promotion scorer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import orjson
import referencing


class SchemaCache:
    """Compiled Draft 2020-12 validators keyed by the schema's canonical JSON (sorted keys), least recently used out.

    The same response or tool schema comes with request after request, and compiling it costs far more than
    validating a small answer against it. A schema that is itself invalid is cached too, as its error message.
    """

    def __init__(self, maxsize: int = 256) -> None:
        self._compile: Callable[[str], tuple[Any, str | None]] = functools.lru_cache(maxsize=maxsize)(self._build)

    @staticmethod
    def _build(canonical: str) -> tuple[Any, str | None]:
        schema = orjson.loads(canonical)
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            return None, exc.message
        # An empty registry: a remote $ref is an error, never fetched (jsonschema's default still fetches over HTTP).
        return jsonschema.Draft202012Validator(schema, registry=referencing.Registry()), None

    def first_error(self, schema: Any, instance: Any) -> tuple[str | None, str | None]:
        """(the first validation error or None, None), or (None, why the schema cannot be applied)."""
        try:
            validator, schema_error = self._compile(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode())
            if schema_error is not None:
                return None, schema_error
            error = next(iter(validator.iter_errors(instance)), None)
        # A client-supplied schema may still break validation (unresolvable $ref, recursion): the check cannot run.
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"
        return (None if error is None else f"{error.json_path}: {error.message}"), None
