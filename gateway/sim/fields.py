"""Field validators shared by the generation APIs, raising vLLM's 400s (``param: "body.<field>"``).

Each reads one field of an already-decoded JSON object and either returns a typed value or raises a
``SimError``; none knows which API the body came through, except where the API names the field differently.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from gateway.sim.errors import SimError, bad_request
from gateway.sim.request import MAX_LOGPROBS, MAX_N, MAX_STOP_STRINGS, Sampling, Tool, ToolChoice
from gateway.wire import dumps

_WORD = re.compile(r"\w+")


def missing(field: str) -> SimError:
    return bad_request(f"Field required: {field}", f"body.{field}")


def wrong(field: str, expected: str) -> SimError:
    return bad_request(f"Input should be {expected}: {field}", f"body.{field}")


def words(text: object) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def word_tokens(obj: object) -> int:
    """Tokens of a JSON value by the simulator's convention for declarations: ``\\w+`` runs of its JSON text."""
    return len(_WORD.findall(dumps(obj).decode()))


def digest(obj: object) -> str:
    """A short stable digest of a JSON value: what "the same request content" means for seeding."""
    return hashlib.sha256(dumps(obj)).hexdigest()[:16]


def _int(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise wrong(field, "a valid integer")
    return value


def common(body: object) -> tuple[dict[str, Any], str | None, bool, bool]:
    """The object itself, ``model``, ``stream`` and ``stream_options.include_usage``."""
    if not isinstance(body, dict):
        raise bad_request("Input should be a valid dictionary or object to extract fields from", "body")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise wrong("model", "a valid string")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise wrong("stream", "a valid boolean")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise wrong("stream_options", "a valid dictionary")
    include_usage = bool(options and options.get("include_usage"))
    return body, model, stream, include_usage


def max_tokens(body: dict[str, Any], names: tuple[str, ...] = ("max_completion_tokens", "max_tokens")) -> int | None:
    for field in names:
        value = _int(body, field)
        if value is None:
            continue
        if value < 1:
            raise bad_request(f"{field} must be at least 1, got {value}.", field)
        return value
    return None


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    raw = body.get("stop")
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise wrong("stop", "a valid string or a list of strings")
    if len(raw) > MAX_STOP_STRINGS:
        raise bad_request(f"At most {MAX_STOP_STRINGS} stop strings are supported, got {len(raw)}.", "stop")
    return tuple(s for s in raw if s)


def _logprob_count(field: str, value: int | None) -> int:
    if value is None:
        return 0
    if value < 0:
        raise bad_request(f"`{field}` must be a positive value.", field)
    if value > MAX_LOGPROBS:
        raise bad_request(
            f"Requested sample logprobs of {value}, which is greater than max allowed: {MAX_LOGPROBS}", field
        )
    return value


def sampling(body: dict[str, Any], *, chat: bool) -> Sampling:
    """``n``, ``stop``, ``seed`` and logprobs; chat's ``logprobs`` is a boolean, completions' an integer."""
    n = _int(body, "n")
    if n is not None and not 1 <= n <= MAX_N:
        raise bad_request(f"n must be between 1 and {MAX_N}, got {n}.", "n")
    seed = _int(body, "seed")
    if chat:
        wanted = body.get("logprobs")
        if wanted is not None and not isinstance(wanted, bool):
            raise wrong("logprobs", "a valid boolean")
        top = _logprob_count("top_logprobs", _int(body, "top_logprobs"))
        if body.get("top_logprobs") is not None and not wanted:
            raise bad_request("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")
        return Sampling(n or 1, _stop(body), seed, bool(wanted), top)
    count = _int(body, "logprobs")
    top = _logprob_count("logprobs", count)
    return Sampling(n or 1, _stop(body), seed, count is not None, top)


def chat_tools(body: dict[str, Any]) -> tuple[Tool, ...]:
    """Chat's ``tools``: ``[{"type": "function", "function": {"name", "parameters"}}]``."""
    raw = body.get("tools")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise wrong("tools", "a valid list")
    tools = []
    for i, item in enumerate(raw):
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise missing(f"tools.{i}.function.name")
        parameters = function.get("parameters")
        tools.append(Tool(function["name"], parameters if isinstance(parameters, dict) else {}))
    return tuple(tools)


def tool_choice(raw: object, tools: tuple[Tool, ...], named: str | None) -> tuple[ToolChoice, str | None]:
    """``none``/``auto``/``required`` or a named function; ``named`` is the name already pulled out of ``raw``."""
    if raw is None:
        return ("auto" if tools else "none"), None
    if raw in ("none", "auto", "required"):
        choice: ToolChoice = raw
        name = None
    elif named is not None:
        choice, name = "named", named
        if name not in {t.name for t in tools}:
            raise bad_request(f"Tool '{name}' has not been passed in `tools`.", "tool_choice")
    else:
        raise wrong("tool_choice", "'none', 'auto', 'required' or a named function")
    if choice != "none" and not tools:
        raise bad_request("When using `tool_choice`, `tools` must be set.", "tool_choice")
    return choice, name
