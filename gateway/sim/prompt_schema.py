"""Finding the JSON shape a prompt asks for, so ``json_object`` answers fit it.

With ``response_format: json_object`` clients describe the object in the prompt: instructor's JSON mode and
many langchain prompts put a JSON Schema (pydantic's ``model_json_schema()``) in the system message, often in a
fenced block after some text; others show an example object. The first JSON object in the texts that is a
schema, or holds one (``{"schema": {...}}``), wins; failing that, an example object becomes a schema of the same
keys and value types. Work is bounded: at most ``MAX_SCAN_CHARS`` of each text and ``MAX_CANDIDATES`` parse
attempts, each done by the C JSON scanner.
"""

from __future__ import annotations

import json
from typing import Any

MAX_SCAN_CHARS = 256 * 1024
MAX_CANDIDATES = 64
_MAX_DEPTH = 4
_SCHEMA_KEYS = frozenset({"properties", "$defs", "definitions", "anyOf", "oneOf", "allOf", "items", "$ref"})
_DECODER = json.JSONDecoder()


def find_schema(texts: tuple[str, ...]) -> dict[str, Any] | None:
    """A JSON Schema for the object the texts ask for, or None when they show no JSON object."""
    example: dict[str, Any] | None = None
    for obj in _objects(texts):
        schema = _schema_in(obj, 0)
        if schema is not None:
            return schema
        if example is None and obj:
            example = obj
    return None if example is None else schema_of_example(example)


def _objects(texts: tuple[str, ...]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    attempts = 0
    for text in texts:
        text = text[:MAX_SCAN_CHARS]
        at = text.find("{")
        while at != -1 and attempts < MAX_CANDIDATES:
            attempts += 1
            try:
                obj, end = _DECODER.raw_decode(text, at)
            except ValueError:
                at = text.find("{", at + 1)
                continue
            if isinstance(obj, dict):
                found.append(obj)
            at = text.find("{", end)
    return found


def is_schema(obj: object) -> bool:
    """A JSON Schema of an object or array: typed as one, or using schema keywords."""
    if not isinstance(obj, dict):
        return False
    if isinstance(obj.get("properties"), dict):
        return True
    return obj.get("type") in ("object", "array") and bool(_SCHEMA_KEYS & obj.keys())


def _schema_in(obj: Any, depth: int) -> dict[str, Any] | None:
    if is_schema(obj):
        return dict(obj)
    if depth >= _MAX_DEPTH or not isinstance(obj, dict):
        return None
    for value in obj.values():
        found = _schema_in(value, depth + 1)
        if found is not None:
            return found
    return None


def schema_of_example(example: Any, depth: int = 0) -> dict[str, Any]:
    """A schema that an example value validates against: same keys (all required), same value types."""
    if isinstance(example, dict) and depth < _MAX_DEPTH:
        properties = {str(k): schema_of_example(v, depth + 1) for k, v in example.items()}
        return {"type": "object", "properties": properties, "required": list(properties)}
    if isinstance(example, list) and depth < _MAX_DEPTH:
        return {"type": "array", "items": schema_of_example(example[0], depth + 1) if example else {}}
    if isinstance(example, bool):
        return {"type": "boolean"}
    if isinstance(example, int):
        return {"type": "integer"}
    if isinstance(example, float):
        return {"type": "number"}
    return {"type": "string"}
