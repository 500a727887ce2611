"""Capture files → validated primary records, one at a time.

A capture may be large, old, truncated or hostile, so reading is a stream with bounded work per line: a line over
:data:`MAX_LINE_BYTES` is drained in chunks and counted, never held; every field a replay reads is type-checked by
hand (no pydantic per record: 100,000 records must take seconds) and a record that fails is counted with its line,
never a traceback. Shadow records (mirror and probe copies) are counted and left out: they are not client requests.
Gzip files are recognised by their magic bytes, whatever their name.
"""

from __future__ import annotations

import gzip
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.endpoints import ENDPOINTS, Endpoint

MAX_LINE_BYTES = 1024 * 1024
"""A record is a request body (bounded by the gateway's ``max_body_bytes``, usually far less) plus a few hundred
bytes; a longer line is skipped unread."""
MAX_INVALID_EXAMPLES = 10
MAX_NAME_CHARS = 256
"""Cohort, route and model names in an outcome: policy names are short, a longer one is not a gateway record."""
CONTENT_MODES = frozenset({"full", "redacted", "none"})
_GZIP_MAGIC = b"\x1f\x8b"
_TEXT = frozenset({str, type(None)})
_NUMBER = frozenset({int, float})


class _LineStream(Protocol):
    def readline(self, size: int | None = -1, /) -> bytes: ...


class BadRecord(Exception):
    """Why a line is not a record this replay can use."""


class CaptureUnreadable(Exception):
    """A capture path that cannot be opened, or is not a regular file (a bad invocation)."""


@dataclass(slots=True)
class Captured:
    """One primary record, reduced to what a replay reads."""

    request_id: str
    policy_version: str | None
    endpoint: Endpoint
    content: str  # full | redacted | none
    body: dict[str, Any] | None
    model: str
    user: str | None
    metadata: dict[str, Any]
    headers: dict[str, str]
    api_key: str | None
    has_tools: bool
    response_format: str
    prompt_chars: int
    max_tokens: int | None  # what the route limit is checked against: the body's fields, else routing.max_tokens
    continues_response: bool  # a Responses request naming a previous_response_id (live: pinned to its model)
    cohort: str | None
    route: str | None
    primary: str | None
    status: int
    error: str | None
    split_u: float | None
    rollout_candidate: str | None
    rollout_weight: float | None


@dataclass
class Skipped:
    """Lines left out, by reason, with the first few bad ones named (``file``, ``line``, ``why``)."""

    invalid: int = 0
    shadow: int = 0
    first_invalid: list[dict[str, Any]] = field(default_factory=list)

    def bad(self, path: str, line: int, why: str) -> None:
        self.invalid += 1
        if len(self.first_invalid) < MAX_INVALID_EXAMPLES:
            self.first_invalid.append({"file": path, "line": line, "why": why})


def check_readable(path: str) -> None:
    """Raise :class:`CaptureUnreadable` unless ``path`` is a regular file this process can open (a FIFO would
    block, a directory has no lines)."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise CaptureUnreadable(f"{path}: not a regular file")
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise CaptureUnreadable(f"{path}: {exc.strerror or exc}") from None


def read_records(paths: list[str], skipped: Skipped) -> Iterator[Captured]:
    for path in paths:
        with open(path, "rb") as raw:
            stream: _LineStream = gzip.GzipFile(fileobj=raw) if raw.peek(2)[:2] == _GZIP_MAGIC else raw
            number = 0
            try:
                for number, line in _lines(stream):
                    if line is None:
                        skipped.bad(path, number, f"line longer than {MAX_LINE_BYTES} bytes")
                        continue
                    try:
                        record = parse_record(line)
                    except BadRecord as exc:
                        skipped.bad(path, number, str(exc))
                        continue
                    if record is None:
                        skipped.shadow += 1
                    else:
                        yield record
            except (OSError, EOFError, zlib.error) as exc:  # a truncated or corrupt gzip stream: keep what was read
                skipped.bad(path, number + 1, f"unreadable from here on: {exc}")


def _lines(stream: _LineStream) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) for each non-blank line; None for a line over the limit, which is drained unkept."""
    number = 0
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = stream.readline(64 * 1024)
            yield number, None
        elif line.strip():
            yield number, line


def parse_record(line: bytes) -> Captured | None:
    """The record on ``line``, or None for a shadow record; :class:`BadRecord` for anything else.

    Written for speed (it runs once per record): the fields are type-checked together in one expression, and only
    a record that fails is looked at again to say which field is wrong."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise BadRecord("not JSON") from None
    if type(data) is not dict:
        raise BadRecord("not a JSON object")
    if data.get("v") != 1:
        raise BadRecord(f"unknown record version {_short(data.get('v'))}")
    kind = data.get("kind")
    if kind == "shadow":
        return None
    if kind != "primary":
        raise BadRecord(f"unknown kind {_short(kind)}")
    endpoint, content, body = data.get("endpoint"), data.get("content"), data.get("request")
    if endpoint not in ENDPOINTS:
        raise BadRecord(f"unknown endpoint {_short(endpoint)}")
    if content not in CONTENT_MODES:
        raise BadRecord(f"unknown content mode {_short(content)}")
    if content == "none":
        body = None
    elif type(body) is not dict:
        raise BadRecord(f"request: an object expected with content {content}")
    routing, outcome = data.get("routing"), data.get("outcome")
    if type(routing) is not dict or type(outcome) is not dict:
        raise BadRecord("routing, outcome: objects expected")
    request_id, version = data.get("request_id"), data.get("policy_version")
    model, user, api_key = routing.get("model"), routing.get("user"), routing.get("api_key")
    response_format, has_tools = routing.get("response_format", "text"), routing.get("has_tools", False)
    metadata, headers = routing.get("metadata", {}), routing.get("headers", {})
    prompt_chars, max_tokens = routing.get("prompt_chars", 0), routing.get("max_tokens")
    cohort, route, primary = outcome.get("cohort"), outcome.get("route"), outcome.get("primary")
    status, error, split_u = outcome.get("status"), outcome.get("error"), outcome.get("split_u")
    if not (
        type(request_id) is str
        and request_id
        and type(version) in _TEXT
        and type(model) in _TEXT
        and type(user) in _TEXT
        and type(api_key) in _TEXT
        and type(response_format) is str
        and type(has_tools) is bool
        and type(metadata) is dict
        and type(headers) is dict
        and (not headers or all(type(v) is str for v in headers.values()))
        and type(prompt_chars) is int
        and prompt_chars >= 0
        and (max_tokens is None or (type(max_tokens) is int and max_tokens >= 0))
        and (cohort is None or (type(cohort) is str and len(cohort) <= MAX_NAME_CHARS))
        and (route is None or (type(route) is str and len(route) <= MAX_NAME_CHARS))
        and (primary is None or (type(primary) is str and len(primary) <= MAX_NAME_CHARS))
        and type(status) is int
        and type(error) in _TEXT
        and (split_u is None or (type(split_u) in _NUMBER and 0.0 <= split_u < 1.0))
    ):
        raise BadRecord(_first_wrong(data, routing, outcome))
    candidate: str | None = None
    weight: float | None = None
    if outcome.get("rollout") is not None:
        candidate, weight = _rollout(outcome["rollout"])
    if body is not None:
        max_tokens = _asked_tokens(body)
    return Captured(
        request_id,
        version,
        endpoint,
        content,
        body,
        model or "",  # null: the body's model was not a string (live: 404)
        user,
        metadata,
        {name.lower(): value for name, value in headers.items()} if headers else headers,
        api_key,
        has_tools,
        response_format,
        prompt_chars,
        max_tokens,
        endpoint == "responses" and body is not None and type(body.get("previous_response_id")) is str,
        cohort,
        route,
        primary or None,
        status,
        error,
        None if split_u is None else float(split_u),
        candidate,
        weight,
    )


def _rollout(rollout: Any) -> tuple[str, float]:
    if type(rollout) is not dict:
        raise BadRecord("outcome.rollout: an object or null expected")
    candidate, weight = rollout.get("candidate"), rollout.get("weight")
    if type(candidate) is not str or len(candidate) > MAX_NAME_CHARS or not isinstance(weight, int | float):
        raise BadRecord("outcome.rollout: {candidate: name, weight: number} expected")
    if isinstance(weight, bool) or not 0.0 <= weight <= 100.0:
        raise BadRecord("outcome.rollout.weight: a percent expected")
    return candidate, float(weight)


def _first_wrong(data: dict[str, Any], routing: dict[str, Any], outcome: dict[str, Any]) -> str:
    """Which field made :func:`parse_record` refuse a record (the slow path, for the message only)."""
    request_id = data.get("request_id")
    if type(request_id) is not str or not request_id:
        return "request_id: a non-empty string expected"
    checks = [
        (data, "policy_version", _TEXT),
        *((routing, key, _TEXT) for key in ("model", "user", "api_key")),
        (routing, "response_format", {str}),
        (routing, "has_tools", {bool}),
        (routing, "metadata", {dict}),
        (routing, "headers", {dict}),
        (routing, "prompt_chars", {int}),
        (routing, "max_tokens", {int, type(None)}),
        *((outcome, key, _TEXT) for key in ("cohort", "route", "primary", "error")),
        (outcome, "status", {int}),
        (outcome, "split_u", {int, float, type(None)}),
    ]
    defaults = {"response_format": "text", "has_tools": False, "metadata": {}, "headers": {}, "prompt_chars": 0}
    for parent, key, types in checks:
        value = parent.get(key, defaults.get(key))
        if type(value) not in types:
            return f"{key}: {' or '.join(sorted(_TYPE_NAMES[t] for t in types))} expected"
        if type(value) is int and value < 0:
            return f"{key}: a negative number"
        if type(value) is str and len(value) > MAX_NAME_CHARS and key in {"cohort", "route", "primary"}:
            return f"{key}: longer than {MAX_NAME_CHARS} characters"
    if any(type(v) is not str for v in routing.get("headers", {}).values()):
        return "headers: string values expected"
    return "outcome.split_u: outside [0, 1)"


_TYPE_NAMES = {str: "a string", type(None): "null", bool: "a boolean", dict: "an object", int: "an integer"}
_TYPE_NAMES[float] = "a number"


def _asked_tokens(body: dict[str, Any]) -> int | None:
    """The tokens a body asks for, read the way the gateway's route limit reads them."""
    asked = body.get("max_completion_tokens", body.get("max_tokens", body.get("max_output_tokens")))
    return asked if isinstance(asked, int) and not isinstance(asked, bool) else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
