"""What a simulated model answers: limits, injected faults, and one planned answer per choice.

Everything here is a pure function of the request, the model's profile and an RNG, so a seeded RNG makes the
simulator deterministic. Each request draws, in this order, the fault rolls (rate limit, error, hang), the
behaviour rolls (refusal, invalid JSON, malformed tool call), then the content of each choice. Content comes
from that same per-request RNG, unless the request has a ``seed``: then it comes from an RNG seeded with the
seed, the model and the request's content, so the same seed and request give the same text (and a different
seed a different one), whatever ``stop``, ``max_tokens`` or ``logprobs`` ask for.

Tool calls follow vLLM's hermes parser: with ``tool_choice`` "auto" (the default with tools) the model calls the
first declared tool until the conversation holds that call's result, then answers with text that uses it;
"required" and a named choice always call (see ``content.pick_tool``). As in vLLM, an auto tool call has
``content: null`` and finish_reason "tool_calls", "required" has ``content: ""`` and "tool_calls", and a named
choice has ``content: ""`` and "stop". Tool calls are never cut by ``max_tokens`` or ``stop``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from random import Random
from typing import Any

from gateway.sim.content import (
    REFUSAL,
    VOCABULARY,
    ToolCall,
    answer_schema,
    break_json,
    final_answer,
    free_text,
    json_text,
    new_id,
    split,
    tool_call,
)
from gateway.sim.errors import bad_request
from gateway.sim.logprobs import TokenLogprob, token_logprobs
from gateway.sim.profile import ModelProfile
from gateway.sim.request import GenRequest

__all__ = ["REFUSAL", "VOCABULARY", "Answer", "Fault", "check_limits", "new_id", "plan", "roll_fault"]

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""vLLM's default ``max_tokens`` for ``/v1/completions``; chat's default is the rest of the context."""
MAX_LOGPROB_ENTRIES = 200_000
"""Most log probabilities (tokens x (1 + top_logprobs), all choices) one answer may carry: a 400 past it."""


class Fault(Enum):
    RATE_LIMIT = "rate_limit"
    ERROR = "error"
    HANG = "hang"


@dataclass(frozen=True, slots=True)
class Answer:
    """One planned choice. ``pieces`` joined is the content; ``content_null`` marks an auto tool call.

    ``stop_reason`` is the stop string that ended the text (vLLM's field); ``logprobs`` one entry per piece,
    when asked for.
    """

    pieces: list[str]
    finish_reason: str
    completion_tokens: int
    tool_call: ToolCall | None = None
    content_null: bool = False
    refusal: bool = False
    invalid_json: bool = False
    malformed_tool_call: bool = False
    stop_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True, slots=True)
class _Rolls:
    """The request's behaviour rolls, and the schema its JSON answers follow."""

    refusal: float
    invalid_json: float
    malformed_tool: float
    schema: Any


def check_limits(req: GenRequest, profile: ModelProfile) -> int:
    """Raise vLLM's 400s for the model's limits; return the most tokens each answer may have."""
    if req.tools and req.tool_choice != "none" and not profile.tool_parser:
        raise bad_request(
            f'"{req.tool_choice}" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
            "tool_choice",
        )
    limit = profile.max_model_len
    if req.api == "responses":
        if req.prompt_tokens >= limit:
            message = f"The engine prompt length {req.prompt_tokens} exceeds the max_model_len {limit}."
            raise bad_request(message + " Please reduce prompt.", "input")
        room = limit - req.prompt_tokens
        return min(req.max_tokens or room, room)
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


def plan(req: GenRequest, profile: ModelProfile, cap: int, rng: Random, model: str) -> list[Answer]:
    """The answers to ``req``: ``n`` per prompt, in choice-index order, each at most ``cap`` tokens long.

    Raises a 400 when the log probabilities asked for would pass ``MAX_LOGPROB_ENTRIES``."""
    rolls = _Rolls(rng.random(), rng.random(), rng.random(), answer_schema(req))
    answers: list[Answer] = []
    for key in req.content_keys:
        seed = req.sampling.seed
        content = rng if seed is None else Random(f"{seed}:{model}:{key}")
        answers += [
            _apply_stop(_content(req, profile, cap, content, rolls), req.sampling.stop) for _ in range(req.sampling.n)
        ]
    return _with_logprobs(req, answers) if req.sampling.logprobs else answers


def _with_logprobs(req: GenRequest, answers: list[Answer]) -> list[Answer]:
    top = req.sampling.top_logprobs
    entries = sum(len(a.pieces) for a in answers) * (1 + top)
    if entries > MAX_LOGPROB_ENTRIES:
        raise bad_request(
            f"This answer would carry {entries} log probabilities, more than the simulator's "
            f"{MAX_LOGPROB_ENTRIES}; ask for fewer choices, tokens or top_logprobs.",
            "top_logprobs",
        )
    per_prompt = req.sampling.n
    out = []
    for i, answer in enumerate(answers):
        if answer.tool_call is None:
            rng = Random(f"logprobs:{req.content_keys[i // per_prompt]}:{i}:{answer.text}")
            answer = replace(answer, logprobs=token_logprobs(answer.pieces, top, rng))
        out.append(answer)
    return out


def _content(req: GenRequest, profile: ModelProfile, cap: int, rng: Random, rolls: _Rolls) -> Answer:
    forced_tool = req.tool_choice in ("required", "named")
    wants_tool = forced_tool or (req.tool_choice == "auto" and req.tool_outcome is None)
    if req.tools and wants_tool and (forced_tool or rolls.refusal >= profile.refusal_rate):
        return _tool_answer(req, rng, rolls.malformed_tool < profile.malformed_tool_call_rate)
    if rolls.refusal < profile.refusal_rate:
        return _cut(split(REFUSAL), cap, refusal=True)
    if req.response_format != "text":
        text = json_text(req, rolls.schema, rng)
        invalid = rolls.invalid_json < profile.invalid_json_rate
        return _cut(split(break_json(text) if invalid else text), cap, invalid_json=invalid)
    if req.tool_outcome is not None:
        return _cut(split(final_answer(req.tool_outcome)), cap)
    pieces = free_text(rng, min(profile.output_tokens, cap), chat=req.chat)
    return Answer(pieces, "length" if cap < profile.output_tokens else "stop", len(pieces))


def _cut(pieces: list[str], cap: int, *, refusal: bool = False, invalid_json: bool = False) -> Answer:
    finish = "length" if len(pieces) > cap else "stop"
    kept = pieces[:cap]
    return Answer(kept, finish, len(kept), refusal=refusal, invalid_json=invalid_json)


def _apply_stop(answer: Answer, stops: tuple[str, ...]) -> Answer:
    """Cut the text before the earliest stop string (the first listed on a tie), as vLLM does."""
    if answer.tool_call is not None or not stops:
        return answer
    text = answer.text
    hits = [(at, order) for order, stop in enumerate(stops) if (at := text.find(stop)) >= 0]
    if not hits:
        return answer
    at, order = min(hits)
    kept: list[str] = []
    length = 0
    for piece in answer.pieces:
        if length + len(piece) > at:
            if at > length:
                kept.append(piece[: at - length])
            break
        kept.append(piece)
        length += len(piece)
    return replace(answer, pieces=kept, finish_reason="stop", completion_tokens=len(kept), stop_reason=stops[order])


def _tool_answer(req: GenRequest, rng: Random, malformed: bool) -> Answer:
    call = tool_call(req, rng, malformed=malformed)
    return Answer(
        pieces=[],
        finish_reason="stop" if req.tool_choice == "named" else "tool_calls",
        completion_tokens=len(call.argument_pieces) + 2,
        tool_call=call,
        content_null=req.tool_choice == "auto",
        malformed_tool_call=malformed,
    )
