"""Responses API bodies and SSE events in vLLM's shapes (its ``ResponsesResponse`` and OpenAI's event types).

The response object lists vLLM's fields in its order, ``null`` included; output items are a ``message`` with one
``output_text`` part, or a ``function_call`` per choice that calls a tool. A stream is ``response.created``,
``response.in_progress``, then per item ``output_item.added``, (for text) ``content_part.added``,
``output_text.delta``... ``output_text.done``, ``content_part.done``, (for a call)
``function_call_arguments.delta``... ``.done``, then ``output_item.done``, and ``response.completed`` with the
whole response. Each event is ``event: <type>`` + ``data: <json>`` with a ``sequence_number`` counting from 0;
there is no ``[DONE]``. Ids: ``resp_``, ``msg_``, ``fc_``, ``call_`` + 32 hex digits, as vLLM makes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from gateway.sim.content import new_id
from gateway.sim.engine import Answer
from gateway.sim.logprobs import response_delta_logprobs, response_logprobs

Frame = tuple[bytes, bool]


def output_items(answer: Answer) -> list[dict[str, Any]]:
    """The finished output items of one answer (ids drawn here, once)."""
    call = answer.tool_call
    if call is not None:
        return [_function_call(new_id("fc_", 16), call.id, call.name, call.arguments, "completed")]
    logprobs = None if answer.logprobs is None else response_logprobs(answer.logprobs)
    return [_message(new_id("msg_", 16), [_text_part(answer.text, logprobs)], "completed")]


def _message(item_id: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": item_id, "content": content, "role": "assistant", "status": status, "type": "message"}


def _text_part(text: str, logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs}


def _function_call(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
        "type": "function_call",
        "id": item_id,
        "status": status,
    }


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": 0,
            "cache_write_tokens": 0,
            "input_tokens_per_turn": [],
            "cached_tokens_per_turn": [],
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": 0,
            "tool_output_tokens": 0,
            "output_tokens_per_turn": [],
            "tool_output_tokens_per_turn": [],
        },
        "total_tokens": prompt + completion,
    }


def response_body(
    rid: str,
    created: int,
    model: str,
    echo: dict[str, Any],
    max_output_tokens: int,
    output: list[dict[str, Any]] | None,
    answer: Answer | None,
    prompt_tokens: int,
) -> dict[str, Any]:
    """The response object; ``output``/``answer`` None gives the in-progress one that starts a stream."""
    incomplete = answer is not None and answer.finish_reason == "length" and answer.tool_call is None
    status = "in_progress" if answer is None else "incomplete" if incomplete else "completed"
    return {
        "id": rid,
        "created_at": created,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": echo["instructions"],
        "metadata": echo["metadata"],
        "model": model,
        "object": "response",
        "output": output or [],
        "parallel_tool_calls": echo["parallel_tool_calls"],
        "temperature": echo["temperature"],
        "tool_choice": echo["tool_choice"],
        "tools": echo["tools"],
        "top_p": echo["top_p"],
        "background": False,
        "max_output_tokens": max_output_tokens,
        "max_tool_calls": echo["max_tool_calls"],
        "previous_response_id": echo["previous_response_id"],
        "prompt": None,
        "reasoning": echo["reasoning"],
        "service_tier": echo["service_tier"],
        "status": status,
        "text": echo["text"],
        "top_logprobs": echo["top_logprobs"],
        "truncation": echo["truncation"],
        "usage": None if answer is None else _usage(prompt_tokens, answer.completion_tokens),
        "user": echo["user"],
        "input_messages": None,
        "output_messages": None,
    }


class _Events:
    """Numbers events as they are framed. ``sequence_number`` and ``type`` keep their place when the payload
    already has them (OpenAI's event types order fields by name), else come last."""

    def __init__(self) -> None:
        self.sequence = 0

    def frame(self, kind: str, payload: dict[str, Any], *, content: bool = False) -> Frame:
        event = {**payload}
        event["sequence_number"] = self.sequence
        event["type"] = kind
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n", content


def response_stream(start: dict[str, Any], final: dict[str, Any], answer: Answer) -> Iterator[Frame]:
    """The SSE events of a streamed response, from its in-progress and final response objects."""
    events = _Events()
    yield events.frame("response.created", {"response": start})
    yield events.frame("response.in_progress", {"response": start})
    (item,) = final["output"]
    at = {"output_index": 0}
    if item["type"] == "function_call":
        opened = {**item, "arguments": "", "status": "in_progress"}
        yield events.frame("response.output_item.added", {"item": opened, **at})
        call = answer.tool_call
        assert call is not None
        for piece in call.argument_pieces:
            yield events.frame(
                "response.function_call_arguments.delta", {"delta": piece, "item_id": item["id"], **at}, content=True
            )
        done = {"arguments": call.arguments, "item_id": item["id"], "name": item["name"], **at}
        yield events.frame("response.function_call_arguments.done", done)
    else:
        part = {"content_index": 0, "item_id": item["id"]}
        yield events.frame("response.output_item.added", {"item": _message(item["id"], [], "in_progress"), **at})
        yield events.frame("response.content_part.added", {**part, **at, "part": _text_part("", [])})
        entries = answer.logprobs or ()
        for i, piece in enumerate(answer.pieces):
            logprobs = response_delta_logprobs(entries[i : i + 1])
            delta = {"content_index": 0, "delta": piece, "item_id": item["id"], "logprobs": logprobs, **at}
            yield events.frame("response.output_text.delta", delta, content=True)
        logprobs = response_delta_logprobs(entries)
        text_done = {**part, "logprobs": logprobs, **at, "sequence_number": 0, "text": answer.text}
        yield events.frame("response.output_text.done", text_done)
        yield events.frame("response.content_part.done", {**part, **at, "part": item["content"][0]})
    yield events.frame("response.output_item.done", {"item": item, **at})
    yield events.frame("response.completed", {"response": final})
