"""A conversation reduced to what the simulated model reacts to: its texts and the state of its tool loop.

Chat messages and Responses input items are first normalised into ``Turn``s. An agent loop reads: user asks,
the model calls tools, the client appends their results and asks again. Once the turns after the last user
message hold a tool result, the model has what it asked for and (with ``tool_choice: auto``) answers with text
that uses it, as a real model does; without this rule an agent loop against the simulator never ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.sim.request import ToolOutcome

PROMPT_ROLES = frozenset({"system", "developer", "user"})


@dataclass(frozen=True, slots=True)
class Turn:
    """One message or item: ``calls`` are (call id, tool name) it makes, ``result`` the (call id, text) it answers."""

    role: str
    text: str
    calls: tuple[tuple[str, str], ...] = ()
    result: tuple[str, str] | None = None
    result_name: str | None = None


def text_of(content: object) -> str:
    """A message content as text: a string, or the ``text`` of each part of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def chat_turns(messages: list[dict[str, Any]]) -> list[Turn]:
    """Chat messages (already checked to be objects with a string ``role``) as turns."""
    turns = []
    for message in messages:
        role = message["role"]
        calls: list[tuple[str, str]] = []
        tool_calls = message.get("tool_calls")
        for call in tool_calls if isinstance(tool_calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                calls.append((str(call.get("id")), str(function.get("name"))))
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            calls.append(("", str(legacy.get("name"))))
        result = None
        name = None
        if role == "tool":
            result = (str(message.get("tool_call_id")), text_of(message.get("content")))
        elif role == "function":
            name = str(message.get("name"))
            result = ("", text_of(message.get("content")))
        turns.append(Turn(role, text_of(message.get("content")), tuple(calls), result, name))
    return turns


def response_turns(items: Iterable[dict[str, Any]]) -> list[Turn]:
    """Responses input items (messages, ``function_call``, ``function_call_output``) as turns."""
    turns = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "function_call":
            turns.append(Turn("assistant", "", ((str(item.get("call_id")), str(item.get("name"))),)))
        elif kind == "function_call_output":
            turns.append(Turn("tool", "", result=(str(item.get("call_id")), text_of(item.get("output")))))
        elif kind == "message" and isinstance(item.get("role"), str):
            turns.append(Turn(item["role"], text_of(item.get("content"))))
    return turns


def tool_outcome(turns: list[Turn]) -> ToolOutcome | None:
    """The tool results after the last user turn, with the tools they answer; None when there are none."""
    start = max((i + 1 for i, t in enumerate(turns) if t.role == "user"), default=0)
    names: dict[str, str] = {}
    results: list[tuple[str, str]] = []
    for turn in turns[start:]:
        names.update(turn.calls)
        if turn.result is not None:
            call_id, text = turn.result
            results.append((turn.result_name or names.get(call_id, "tool"), text))
    if not results:
        return None
    return ToolOutcome(tuple(results), frozenset(names.values()))


def prompt_texts(turns: list[Turn], *extra: str) -> tuple[str, ...]:
    """The instruction and user texts, where a client puts the JSON Schema it wants an answer in."""
    return (*(e for e in extra if e), *(t.text for t in turns if t.role in PROMPT_ROLES and t.text))
