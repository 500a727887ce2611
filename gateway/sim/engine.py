"""What a simulated model answers: limits, injected faults, and the generated content.

Everything here is a pure function of the request, the model's profile and an RNG, so a seeded RNG makes the
simulator deterministic. Each request draws, in this order, the fault rolls (rate limit, error, hang), then the
answer. Answers are lists of *pieces*: one piece is one token, one stream chunk, and one unit of
``completion_tokens``.

Tool calls follow vLLM's hermes parser: with ``tool_choice`` "auto" (the default with tools) the model calls the
first declared tool, with "required" too, and with a named choice that tool; arguments are an instance of the
tool's ``parameters`` schema. As in vLLM, an auto tool call has ``content: null`` and finish_reason
"tool_calls", "required" has ``content: ""`` and "tool_calls", and a named choice has ``content: ""`` and
"stop". Tool calls are never cut by ``max_tokens``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from enum import Enum
from random import Random

from gateway.sim.errors import bad_request
from gateway.sim.parsing import GenRequest, Tool
from gateway.sim.profile import ModelProfile
from gateway.sim.schema_instance import WORDS, instance

VOCABULARY = (
    *WORDS,
    "the", "model", "answer", "is", "a", "small", "river", "stone", "light", "quiet", "green", "under",
    "over", "signal", "paper", "window", "north", "market", "engine", "garden", "simple", "clear", "again",
)  # fmt: skip
REFUSAL = "I'm sorry, but I can't help with that."
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""vLLM's default ``max_tokens`` for ``/v1/completions``; chat's default is the rest of the context."""
_PIECE = re.compile(r"\s*\S+")


class Fault(Enum):
    RATE_LIMIT = "rate_limit"
    ERROR = "error"
    HANG = "hang"


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    argument_pieces: list[str]


@dataclass(frozen=True, slots=True)
class Answer:
    """A planned answer. ``pieces`` joined is the content; ``content_null`` marks an auto tool call."""

    pieces: list[str]
    finish_reason: str
    completion_tokens: int
    tool_call: ToolCall | None = None
    content_null: bool = False
    refusal: bool = False
    invalid_json: bool = False
    malformed_tool_call: bool = False


def new_id(prefix: str) -> str:
    """``prefix`` + 16 hex digits, like vLLM's ids. Ids are random, not seeded: they are not content."""
    return prefix + os.urandom(8).hex()


def check_limits(req: GenRequest, profile: ModelProfile) -> int:
    """Raise vLLM's 400s for the model's limits; return the most tokens the answer may have."""
    if req.tools and req.tool_choice != "none" and not profile.tool_parser:
        raise bad_request(
            f'"{req.tool_choice}" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
            "tool_choice",
        )
    limit = profile.max_model_len
    if req.max_tokens is not None and req.max_tokens > limit:
        raise bad_request(
            f"max_tokens={req.max_tokens} cannot be greater than max_model_len={limit}. "
            "Please request fewer output tokens.",
            "max_tokens",
        )
    if req.prompt_tokens >= limit:
        raise bad_request(
            f"This model's maximum context length is {limit} tokens. However, your request has "
            f"{req.prompt_tokens} input tokens. Please reduce the length of the input messages.",
            "input_tokens",
        )
    room = limit - req.prompt_tokens
    requested = req.max_tokens or (room if req.chat else COMPLETIONS_DEFAULT_MAX_TOKENS)
    return min(requested, room)


def roll_fault(profile: ModelProfile, rng: Random) -> Fault | None:
    """Draw the three fault rolls (always all three, so later draws do not depend on the rates)."""
    rate_limited = rng.random() < profile.rate_limit_rate
    errored = rng.random() < profile.error_rate
    hung = rng.random() < profile.hang_rate
    if rate_limited:
        return Fault.RATE_LIMIT
    if errored:
        return Fault.ERROR
    return Fault.HANG if hung else None


def plan(req: GenRequest, profile: ModelProfile, cap: int, rng: Random) -> Answer:
    """The answer to ``req``, at most ``cap`` tokens long (except tool calls)."""
    u_refusal, u_json, u_tool = rng.random(), rng.random(), rng.random()
    forced_tool = req.tool_choice in ("required", "named")
    if req.tool_choice != "none" and req.tools and (forced_tool or u_refusal >= profile.refusal_rate):
        return _tool_answer(req, rng, u_tool < profile.malformed_tool_call_rate)
    if u_refusal < profile.refusal_rate:
        return _cut(_split(REFUSAL), cap, refusal=True)
    if req.response_format != "text":
        text = json.dumps(instance(req.schema, rng) if req.response_format == "json_schema" else _object(rng))
        invalid = u_json < profile.invalid_json_rate
        return _cut(_split(_break_json(text) if invalid else text), cap, invalid_json=invalid)
    words = rng.choices(VOCABULARY, k=min(profile.output_tokens, cap))
    if req.chat:
        pieces = [words[0], *(" " + w for w in words[1:])]
    else:
        pieces = [" " + w for w in words]
    return Answer(pieces, "length" if cap < profile.output_tokens else "stop", len(pieces))


def _split(text: str) -> list[str]:
    return _PIECE.findall(text)


def _cut(pieces: list[str], cap: int, *, refusal: bool = False, invalid_json: bool = False) -> Answer:
    finish = "length" if len(pieces) > cap else "stop"
    kept = pieces[:cap]
    return Answer(kept, finish, len(kept), refusal=refusal, invalid_json=invalid_json)


def _object(rng: Random) -> dict[str, object]:
    return {"answer": " ".join(rng.choices(VOCABULARY, k=3)), "confidence": round(rng.random(), 2)}


def _break_json(text: str) -> str:
    """Drop the last character and add a trailing comma: never valid JSON, whatever ``text`` held."""
    return text[:-1] + ","


def _tool_answer(req: GenRequest, rng: Random, malformed: bool) -> Answer:
    tool = _pick_tool(req)
    arguments = json.dumps(instance(tool.parameters or {"type": "object"}, rng), ensure_ascii=False)
    name = tool.name
    if malformed:
        if rng.random() < 0.5:
            declared = {t.name for t in req.tools}
            name = "undeclared_tool"
            while name in declared:
                name += "_"
        else:
            arguments = _break_json(arguments)
    argument_pieces = _split(arguments)
    call = ToolCall(new_id("chatcmpl-tool-"), name, arguments, argument_pieces)
    auto = req.tool_choice == "auto"
    return Answer(
        pieces=[],
        finish_reason="stop" if req.tool_choice == "named" else "tool_calls",
        completion_tokens=len(argument_pieces) + 2,
        tool_call=call,
        content_null=auto,
        malformed_tool_call=malformed,
    )


def _pick_tool(req: GenRequest) -> Tool:
    if req.tool_choice == "named":
        return next(t for t in req.tools if t.name == req.tool_name)
    return req.tools[0]
