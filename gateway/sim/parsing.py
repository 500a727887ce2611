"""Request bodies parsed into ``GenRequest``, with vLLM's 400s for bodies it would reject.

This stage knows nothing about the served models or their profiles: like vLLM's FastAPI validation it runs
before the model is looked up, so a body that is both malformed and names an unknown model gets the 400.
Token counts are the simulator's own convention: whitespace-split words, plus ``MESSAGE_OVERHEAD`` per chat
message (the chat template's role markers) and the word count of the tool declarations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from gateway.sim.errors import SimError, bad_request
from gateway.wire import dumps

MESSAGE_OVERHEAD = 4

ToolChoice = Literal["none", "auto", "required", "named"]
ResponseFormat = Literal["text", "json_object", "json_schema"]
_WORD = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class GenRequest:
    """What the simulator needs from a chat or completions request body."""

    chat: bool
    model: str | None
    stream: bool
    include_usage: bool
    max_tokens: int | None
    prompt_tokens: int
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = "none"
    tool_name: str | None = None
    response_format: ResponseFormat = "text"
    schema: Any = None


def _missing(field: str) -> SimError:
    return bad_request(f"Field required: {field}", f"body.{field}")


def _wrong(field: str, expected: str) -> SimError:
    return bad_request(f"Input should be {expected}: {field}", f"body.{field}")


def _words(text: object) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def _content_tokens(content: object) -> int:
    if isinstance(content, list):
        return sum(_words(part.get("text")) for part in content if isinstance(part, dict))
    return _words(content)


def _common(body: object) -> tuple[dict[str, Any], str | None, bool, bool]:
    if not isinstance(body, dict):
        raise bad_request("Input should be a valid dictionary or object to extract fields from", "body")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _wrong("model", "a valid string")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _wrong("stream", "a valid boolean")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _wrong("stream_options", "a valid dictionary")
    include_usage = bool(options and options.get("include_usage"))
    return body, model, stream, include_usage


def _max_tokens(body: dict[str, Any]) -> int | None:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise _wrong(field, "a valid integer")
        if value < 1:
            raise bad_request(f"{field} must be at least 1, got {value}.", field)
        return value
    return None


def _tools(body: dict[str, Any]) -> tuple[Tool, ...]:
    raw = body.get("tools")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _wrong("tools", "a valid list")
    tools = []
    for i, item in enumerate(raw):
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _missing(f"tools.{i}.function.name")
        parameters = function.get("parameters")
        tools.append(Tool(function["name"], parameters if isinstance(parameters, dict) else {}))
    return tuple(tools)


def _tool_choice(body: dict[str, Any], tools: tuple[Tool, ...]) -> tuple[ToolChoice, str | None]:
    raw = body.get("tool_choice")
    if raw is None:
        return ("auto" if tools else "none"), None
    if raw in ("none", "auto", "required"):
        choice: ToolChoice = raw
        name = None
    elif isinstance(raw, dict) and isinstance(raw.get("function"), dict):
        choice, name = "named", raw["function"].get("name")
        if name not in {t.name for t in tools}:
            raise bad_request(f"Tool '{name}' has not been passed in `tools`.", "tool_choice")
    else:
        raise _wrong("tool_choice", "'none', 'auto', 'required' or a named function")
    if choice != "none" and not tools:
        raise bad_request("When using `tool_choice`, `tools` must be set.", "tool_choice")
    return choice, name


def _response_format(body: dict[str, Any]) -> tuple[ResponseFormat, Any]:
    raw = body.get("response_format")
    if raw is None:
        return "text", None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind in ("text", "json_object"):
        return kind, None
    if kind == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, dict):
            raise _missing("response_format.json_schema")
        return "json_schema", spec.get("schema", {})
    raise _wrong("response_format.type", "'text', 'json_object' or 'json_schema'")


def parse_chat(body: object) -> GenRequest:
    """Validate a ``/v1/chat/completions`` body."""
    body, model, stream, include_usage = _common(body)
    messages = body.get("messages")
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _wrong("messages", "a valid list")
    prompt_tokens = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _missing(f"messages.{i}.role")
        prompt_tokens += MESSAGE_OVERHEAD + _content_tokens(message.get("content"))
    tools = _tools(body)
    if tools:
        prompt_tokens += len(_WORD.findall(dumps(body["tools"]).decode()))
    tool_choice, tool_name = _tool_choice(body, tools)
    response_format, schema = _response_format(body)
    return GenRequest(
        chat=True,
        model=model,
        stream=stream,
        include_usage=include_usage,
        max_tokens=_max_tokens(body),
        prompt_tokens=prompt_tokens,
        tools=tools,
        tool_choice=tool_choice,
        tool_name=tool_name,
        response_format=response_format,
        schema=schema,
    )


def parse_completion(body: object) -> GenRequest:
    """Validate a ``/v1/completions`` body; a prompt may be text, a list of texts, or token ids."""
    body, model, stream, include_usage = _common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise _missing("prompt")
    if isinstance(prompt, str):
        prompt_tokens = _words(prompt)
    elif isinstance(prompt, list) and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        prompt_tokens = len(prompt)
    elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        prompt_tokens = sum(_words(p) for p in prompt)
    else:
        raise _wrong("prompt", "a string, a list of strings or a list of token ids")
    return GenRequest(
        chat=False,
        model=model,
        stream=stream,
        include_usage=include_usage,
        max_tokens=_max_tokens(body),
        prompt_tokens=prompt_tokens,
    )
