"""The content of simulated answers: free text, JSON objects, tool calls, and final answers after tool results.

All functions are pure given their RNG. Text is produced as *pieces* (one token, one stream chunk each): chat
pieces join with spaces inside them (``["the", " answer"]``), completion pieces each start with one.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from random import Random
from typing import Any

from gateway.sim.prompt_schema import find_schema
from gateway.sim.request import GenRequest, Tool, ToolOutcome
from gateway.sim.schema_instance import WORDS, instance

VOCABULARY = (
    *WORDS,
    "the", "model", "answer", "is", "a", "small", "river", "stone", "light", "quiet", "green", "under",
    "over", "signal", "paper", "window", "north", "market", "engine", "garden", "simple", "clear", "again",
)  # fmt: skip
REFUSAL = "I'm sorry, but I can't help with that."
RESULT_WORDS = 40
"""Words of each tool result quoted in a final answer."""
RESULTS_QUOTED = 8
"""Tool results quoted in a final answer (the first ones)."""
_PIECE = re.compile(r"\s*\S+")
_WORD = re.compile(r"[A-Za-z][A-Za-z-]{2,}")


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    argument_pieces: list[str]


def new_id(prefix: str, nbytes: int = 8) -> str:
    """``prefix`` + ``2 * nbytes`` hex digits, like vLLM's ids (16 for chat's, 32 for the Responses API's).

    Ids are random, not seeded: they are not content."""
    return prefix + os.urandom(nbytes).hex()


def split(text: str) -> list[str]:
    """Text as pieces: each run of whitespace goes with the word after it."""
    return _PIECE.findall(text)


def free_text(rng: Random, count: int, *, chat: bool) -> list[str]:
    """``count`` vocabulary words; a longer ``count`` extends a shorter one's text (same RNG state)."""
    words = rng.choices(VOCABULARY, k=count)
    if chat and words:
        return [words[0], *(" " + w for w in words[1:])]
    return [" " + w for w in words]


def answer_schema(req: GenRequest) -> Any:
    """The schema a JSON answer follows: the ``json_schema`` format's, or for ``json_object`` the schema (or
    example object) the prompt shows; None when there is none (worked out once per request)."""
    if req.response_format == "json_schema":
        return req.schema
    if req.response_format == "json_object":
        return find_schema(req.prompt_texts)
    return None


def json_text(req: GenRequest, schema: Any, rng: Random) -> str:
    """A JSON answer: an instance of ``schema``, or without one an object built from the prompt's words."""
    if schema is not None or req.response_format == "json_schema":
        return json.dumps(instance(schema, rng))
    return json.dumps(_prompt_object(req.prompt_texts, rng))


def _prompt_object(texts: tuple[str, ...], rng: Random) -> dict[str, object]:
    """Without a schema to follow: an answer, the last prompt's longest word (the last of equals) as its topic,
    and a confidence."""
    words = _WORD.findall(texts[-1][:4096]) if texts else []
    topic = max(reversed(words), key=len).lower() if words else rng.choice(WORDS)
    return {"answer": " ".join(rng.choices(VOCABULARY, k=3)), "topic": topic, "confidence": round(rng.random(), 2)}


def break_json(text: str) -> str:
    """Drop the last character and add a trailing comma: never valid JSON, whatever ``text`` held."""
    return text[:-1] + ","


def final_answer(outcome: ToolOutcome) -> str:
    """A final answer that uses the tool results the conversation holds, quoting each (shortened)."""
    parts = []
    for name, result in outcome.results[:RESULTS_QUOTED]:
        quoted = " ".join(result.split()[:RESULT_WORDS]) or "(no output)"
        parts.append(f"{name} returned {quoted}")
    return "Based on the tool results: " + "; ".join(parts) + "."


def pick_tool(req: GenRequest) -> Tool:
    """The named tool; with ``required`` after tool results, the first tool not called yet (an agent's output
    tool comes after its function tools), else the last; otherwise the first declared."""
    if req.tool_choice == "named":
        return next(t for t in req.tools if t.name == req.tool_name)
    if req.tool_choice == "required" and req.tool_outcome is not None:
        fresh = [t for t in req.tools if t.name not in req.tool_outcome.called]
        return fresh[0] if fresh else req.tools[-1]
    return req.tools[0]


def tool_call(req: GenRequest, rng: Random, *, malformed: bool) -> ToolCall:
    """A call of ``pick_tool(req)`` with arguments that are an instance of its parameters schema; a malformed
    call names an undeclared tool or carries invalid JSON (one or the other, drawn from ``rng``)."""
    tool = pick_tool(req)
    arguments = json.dumps(instance(tool.parameters or {"type": "object"}, rng), ensure_ascii=False)
    name = tool.name
    if malformed:
        if rng.random() < 0.5:
            declared = {t.name for t in req.tools}
            name = "undeclared_tool"
            while name in declared:
                name += "_"
        else:
            arguments = break_json(arguments)
    call_id = new_id("call_", 16) if req.api == "responses" else new_id("chatcmpl-tool-")
    return ToolCall(call_id, name, arguments, split(arguments))
