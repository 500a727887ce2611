"""Read, parse and check an OpenAI request body just enough to route it safely.

The full schema check is vLLM's job (it answers 400 with details, passed through); the gateway checks the fields it
reads or rewrites, so a bad body gets a clear 400 here instead of a confusing answer later. The body itself is
bounded in size (413), in the time it takes to arrive (408) and in how deep it nests (400).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from starlette.types import Receive

from gateway.endpoints import Endpoint
from gateway.errors import InvalidRequest, PayloadTooLarge, RequestTimeout
from gateway.wire import loads

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
DEFAULT_BODY_TIMEOUT_S = 30.0  # the policy's limits.body_timeout_s default
# orjson parses up to 1024 levels but serializes only up to 254, and the gateway re-serializes bodies (and wraps them
# in spans, captures and mirror copies): a depth well under that, and more than any real request or JSON Schema uses.
MAX_JSON_DEPTH = 128


class ClientDisconnected(Exception):
    """The client went away before its request body arrived: nobody is left to answer."""


async def read_body(
    receive: Receive, declared: str | None, limit: int, *, timeout_s: float = DEFAULT_BODY_TIMEOUT_S
) -> bytes:
    """The whole request body from ASGI ``receive``, refused early when ``content-length`` (``declared``) says it
    is over ``limit`` and as soon as it grows over it otherwise.

    ``timeout_s`` is wall-clock time for the whole body, not per chunk: a client that trickles a byte now and then
    gets a 408 all the same (slowloris).
    """
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    try:
        async with asyncio.timeout(timeout_s):
            return await _receive_all(receive, limit)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g}s") from None


async def _receive_all(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise InvalidRequest("the request body is empty; expected a JSON object")
    try:
        body = loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if _nests_deeper(raw, body, MAX_JSON_DEPTH):
        raise InvalidRequest(f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep")
    return body


def _nests_deeper(raw: bytes, body: dict[str, Any], limit: int) -> bool:
    """Whether ``body`` (parsed from ``raw``) has arrays or objects more than ``limit`` levels deep (itself: 1).

    Most bodies have fewer brackets than ``limit`` in all, which a byte count (C speed) proves. The others are
    walked a level at a time, without recursion: one visit per value, the same order of work as parsing them.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    level: list[Any] = [body]
    for _ in range(limit):
        deeper = []
        for container in level:
            for value in container.values() if isinstance(container, dict) else container:
                if isinstance(value, dict | list):
                    deeper.append(value)
        if not deeper:
            return False
        level = deeper
    return True


def parse_body(raw: bytes, endpoint: Endpoint, max_messages: int = 2048) -> dict[str, Any]:
    body = parse_json_object(raw)
    _check_common(body)
    if endpoint == "chat":
        _check_messages(body.get("messages"))
        count = len(body["messages"])
        _require(count <= max_messages, f"{count} messages; the limit is {max_messages}", "messages")
    elif endpoint == "completions":
        _check_prompt(body)
    elif endpoint == "responses":
        _check_responses_input(body, max_messages)
    else:
        _check_embeddings_input(body)
    return body


def _require(condition: bool, message: str, param: str) -> None:
    if not condition:
        raise InvalidRequest(message, param=param)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_common(body: dict[str, Any]) -> None:
    model = body.get("model")
    _require("model" in body, "you must provide a 'model' parameter", "model")
    _require(isinstance(model, str) and model != "", "'model' must be a non-empty string", "model")
    _require(isinstance(body.get("stream", False), bool), "'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    _require(options is None or isinstance(options, dict), "'stream_options' must be an object", "stream_options")
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(name)
        _require(value is None or (_is_int(value) and value >= 1), f"'{name}' must be an integer >= 1", name)
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(name)
        _require(value is None or _is_number(value), f"'{name}' must be a number", name)
    for name in ("user",):
        value = body.get(name)
        _require(value is None or isinstance(value, str), f"'{name}' must be a string", name)
    metadata = body.get("metadata")
    _require(metadata is None or isinstance(metadata, dict), "'metadata' must be an object", "metadata")
    tools = body.get("tools")
    _require(tools is None or isinstance(tools, list), "'tools' must be an array", "tools")
    fmt = body.get("response_format")
    _require(
        fmt is None or (isinstance(fmt, dict) and isinstance(fmt.get("type"), str)),
        "'response_format' must be an object with a 'type'",
        "response_format",
    )


def _check_messages(messages: Any) -> None:
    _require(messages is not None, "you must provide a 'messages' parameter", "messages")
    _require(isinstance(messages, list) and len(messages) > 0, "'messages' must be a non-empty array", "messages")
    for i, message in enumerate(messages):
        _require(isinstance(message, dict), f"messages[{i}] must be an object", f"messages[{i}]")
        _require(isinstance(message.get("role"), str), f"messages[{i}].role must be a string", f"messages[{i}].role")
        content = message.get("content")
        _require(
            content is None or isinstance(content, str | list),
            f"messages[{i}].content must be a string or an array of content parts",
            f"messages[{i}].content",
        )


def _check_prompt(body: dict[str, Any]) -> None:
    prompt = body.get("prompt")
    _require(prompt is not None, "you must provide a 'prompt' parameter", "prompt")
    _require(
        isinstance(prompt, str) or (isinstance(prompt, list) and len(prompt) > 0),
        "'prompt' must be a string or a non-empty array",
        "prompt",
    )


def _check_responses_input(body: dict[str, Any], max_items: int) -> None:
    """The Responses API's ``input``: a string, or a list of input items (messages, function call outputs...)."""
    value = body.get("input")
    _require(value is not None, "you must provide an 'input' parameter", "input")
    _require(isinstance(value, str | list), "'input' must be a string or an array of input items", "input")
    if isinstance(value, list):
        _require(len(value) <= max_items, f"{len(value)} input items; the limit is {max_items}", "input")
        for i, item in enumerate(value):
            _require(isinstance(item, dict), f"input[{i}] must be an object", f"input[{i}]")
    instructions = body.get("instructions")
    _require(instructions is None or isinstance(instructions, str), "'instructions' must be a string", "instructions")
    text = body.get("text")
    _require(text is None or isinstance(text, dict), "'text' must be an object", "text")
    previous = body.get("previous_response_id")
    _require(
        previous is None or (isinstance(previous, str) and 0 < len(previous) <= 256),
        "'previous_response_id' must be a response id",
        "previous_response_id",
    )
    value = body.get("max_output_tokens")
    _require(
        value is None or (_is_int(value) and value >= 1),
        "'max_output_tokens' must be an integer >= 1",
        "max_output_tokens",
    )


def _check_embeddings_input(body: dict[str, Any]) -> None:
    """``input``: a string, a list of strings, a list of token ids or a list of such lists, none of them empty."""
    value = body.get("input")
    _require(value is not None, "you must provide an 'input' parameter", "input")
    ok = isinstance(value, str) or (
        isinstance(value, list)
        and len(value) > 0
        and (
            all(isinstance(v, str) for v in value)
            or all(_is_int(v) for v in value)
            or all(isinstance(v, list) and v and all(_is_int(t) for t in v) for v in value)
        )
    )
    _require(
        ok, "'input' must be a string, an array of strings, or an array of token ids (or of arrays of them)", "input"
    )
    _require(not body.get("stream"), "embeddings do not stream", "stream")
