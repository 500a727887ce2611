"""Parse and check an OpenAI request body just enough to route it safely.

The full schema check is vLLM's job (it answers 400 with details, passed through); the gateway checks the fields it
reads or rewrites, so a bad body gets a clear 400 here instead of a confusing answer later.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import Receive

from gateway.context import Endpoint
from gateway.errors import InvalidRequest, PayloadTooLarge
from gateway.wire import loads

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ClientDisconnected(Exception):
    """The client went away before its request body arrived: nobody is left to answer."""


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole request body from ASGI ``receive``, refused early when ``content-length`` (``declared``) says it
    is over ``limit`` and as soon as it grows over it otherwise."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
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
    return body


def parse_body(raw: bytes, endpoint: Endpoint, max_messages: int = 2048) -> dict[str, Any]:
    body = parse_json_object(raw)
    _check_common(body)
    if endpoint == "chat":
        _check_messages(body.get("messages"))
        count = len(body["messages"])
        _require(count <= max_messages, f"{count} messages; the limit is {max_messages}", "messages")
    else:
        _check_prompt(body)
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
