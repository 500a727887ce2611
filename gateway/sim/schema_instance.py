"""A small JSON Schema instance generator, for structured outputs and tool-call arguments.

It covers what OpenAI clients send (pydantic's ``model_json_schema()``, hand-written tool parameters): ``type``
(one or a list), ``enum``, ``const``, ``properties``/``required`` (required ones are filled), ``items`` with
``minItems``/``maxItems``, numeric bounds, string lengths and common ``format``s, ``anyOf``/``oneOf`` (first
option that is not ``null``), ``allOf`` (merged), and local ``$ref``s (``#/$defs/...``). ``pattern`` is not
honoured. Values come from ``rng`` so the simulator stays deterministic.

Required properties are always filled, optional ones only on the top-level object (a fuller answer without
letting optional self-references multiply). Work and size are bounded whatever the schema: past ``MAX_VALUES``
values (a hostile, deeply self-referencing schema) the rest come out null, and strings stop at 1024 characters.
"""

from __future__ import annotations

import math
from random import Random
from typing import Any

WORDS = ("alpha", "bravo", "delta", "echo", "lima", "oscar", "sierra", "tango", "kilo", "nova")
_MAX_DEPTH = 8
MAX_VALUES = 2000
_MAX_HOPS = 32
"""``$ref``/``anyOf``/``allOf`` indirections followed before giving up (``{"$ref": "#"}`` points at itself)."""
_MAX_LENGTH = 1024
_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "12:00:00",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "192.0.2.1",
}


class _Budget:
    """How many more values may be generated."""

    def __init__(self) -> None:
        self.left = MAX_VALUES

    def spend(self) -> bool:
        self.left -= 1
        return self.left >= 0


def instance(schema: Any, rng: Random) -> Any:
    """A value that validates against ``schema`` (for the supported keywords)."""
    return _value(schema, rng, schema if isinstance(schema, dict) else {}, 0, _Budget())


def _resolve(ref: object, root: dict[str, Any]) -> Any:
    if not isinstance(ref, str):
        return {}
    node: Any = root
    for part in ref.removeprefix("#").strip("/").split("/"):
        if not part:
            continue
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(node, dict) else {}
    return node


def _merge_all_of(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        part = _resolve(part["$ref"], root) if isinstance(part, dict) and "$ref" in part else part
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                merged["properties"] = {**_dict(merged.get("properties")), **value}
            elif key == "required" and isinstance(value, list):
                merged["required"] = [*_list(merged.get("required")), *value]
            else:
                merged.setdefault(key, value)
    return merged


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _number_of(value: object, default: float | None) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return default


def _type_of(schema: dict[str, Any], depth: int) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        options = [k for k in kind if k != "null"]
        return str(options[0]) if options else "null"
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "object" if depth == 0 else "string"


def _value(schema: Any, rng: Random, root: dict[str, Any], depth: int, budget: _Budget, hops: int = 0) -> Any:
    if not isinstance(schema, dict) or hops > _MAX_HOPS or not budget.spend():
        return None
    if "$ref" in schema:
        return _value(_resolve(schema["$ref"], root), rng, root, depth, budget, hops + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            useful = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return _value((useful or options)[0], rng, root, depth, budget, hops + 1)
    if isinstance(schema.get("allOf"), list):
        return _value(_merge_all_of(schema, root), rng, root, depth, budget, hops + 1)
    kind = _type_of(schema, depth)
    if kind == "object":
        return _object(schema, rng, root, depth, budget)
    if kind == "array":
        return _array(schema, rng, root, depth, budget)
    if kind == "string":
        return _string(schema, rng)
    if kind == "integer":
        return _integer(schema, rng)
    if kind == "number":
        return _number(schema, rng)
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def _object(schema: dict[str, Any], rng: Random, root: dict[str, Any], depth: int, budget: _Budget) -> dict[str, Any]:
    if depth >= _MAX_DEPTH:
        return {}
    properties = _dict(schema.get("properties"))
    names = [str(n) for n in _list(schema.get("required"))]
    if depth == 0:
        names += [n for n in properties if n not in names]
    return {name: _value(properties.get(name, {"type": "string"}), rng, root, depth + 1, budget) for name in names}


def _array(schema: dict[str, Any], rng: Random, root: dict[str, Any], depth: int, budget: _Budget) -> list[Any]:
    if depth >= _MAX_DEPTH:
        return []
    count = int(_number_of(schema.get("minItems"), 1) or 0)
    high = _number_of(schema.get("maxItems"), None)
    if high is not None:
        count = min(count, int(high))
    count = max(0, min(count, budget.left))
    return [_value(schema.get("items", {}), rng, root, depth + 1, budget) for _ in range(count)]


def _string(schema: dict[str, Any], rng: Random) -> str:
    text = _FORMATS.get(str(schema.get("format")), rng.choice(WORDS))
    low = min(int(_number_of(schema.get("minLength"), 0) or 0), _MAX_LENGTH)
    high = _number_of(schema.get("maxLength"), None)
    if len(text) < low:
        text += "x" * (low - len(text))
    return text[: max(int(high), 0)] if high is not None else text


def _bounds(schema: dict[str, Any], step: float) -> tuple[float, float]:
    low = _number_of(schema.get("minimum"), None)
    exclusive_low = _number_of(schema.get("exclusiveMinimum"), None)
    if low is None and exclusive_low is not None:
        low = exclusive_low + step
    high = _number_of(schema.get("maximum"), None)
    exclusive_high = _number_of(schema.get("exclusiveMaximum"), None)
    if high is None and exclusive_high is not None:
        high = exclusive_high - step
    if low is None:
        low = 0 if high is None or high >= 0 else high - 100
    if high is None:
        high = low + 100
    return float(low), float(max(high, low))


def _integer(schema: dict[str, Any], rng: Random) -> int:
    low, high = _bounds(schema, 1)
    return rng.randint(math.ceil(low), max(math.ceil(low), math.floor(high)))


def _number(schema: dict[str, Any], rng: Random) -> float:
    low, high = _bounds(schema, 0.01)
    return min(max(round(rng.uniform(low, high), 2), low), high)
