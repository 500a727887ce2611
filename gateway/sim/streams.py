"""Chat and completions SSE streams in exactly vLLM 0.32's framing.

Frames come out of generators as ready-to-write bytes, each tagged with whether it starts a generation step:
the server paces those (per-token delay) and counts them for ``stream_cut_after``. With ``n`` > 1 the choices
advance together, one chunk per choice per step, each chunk carrying its choice's ``index`` (vLLM generates
the sequences in one batch). Chat streams start with a ``delta.role`` chunk per choice, put ``finish_reason``
(and ``stop_reason``) on a choice's last content chunk (tool calls on a trailing ``delta: {}`` chunk), add a
``"choices": []`` usage chunk only when asked, and end with ``data: [DONE]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway.sim.engine import Answer
from gateway.sim.logprobs import chat_logprobs, completion_logprobs
from gateway.wire import SSE_DONE, sse_event

Frame = tuple[bytes, bool]
"""An SSE frame and whether it starts a generation step."""


def _usage_frame(head: dict[str, Any], prompt: int, answers: list[Answer], fp: str) -> bytes:
    completion = sum(a.completion_tokens for a in answers)
    usage = {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}
    return sse_event({**head, "choices": [], "usage": usage, "system_fingerprint": fp})


Chunk = tuple[dict[str, Any], bool]
"""A choice's chunk and whether it carries generated tokens."""


def _interleave(head: dict[str, Any], per_choice: list[list[Chunk]]) -> Iterator[Frame]:
    """One chunk per choice per step, in choice order; a step's first chunk is paced if it carries tokens."""
    for step in range(max((len(chunks) for chunks in per_choice), default=0)):
        first = True
        for chunks in per_choice:
            if step < len(chunks):
                choice, tokens = chunks[step]
                yield sse_event({**head, "choices": [choice]}), first and tokens
                first = False


def _chat_choice(index: int, delta: dict[str, Any], logprobs: Any, finish: str | None, stop: str | None) -> Any:
    choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    if finish is not None:
        choice["stop_reason"] = stop
    choice["token_ids"] = None
    return choice


def _chat_chunks(index: int, answer: Answer) -> list[Chunk]:
    call = answer.tool_call
    if call is not None:
        header = {"id": call.id, "type": "function", "index": 0, "function": {"name": call.name}}
        calls: list[Chunk] = [(_chat_choice(index, {"content": None, "tool_calls": [header]}, None, None, None), True)]
        for piece in call.argument_pieces:
            fragment = {"index": 0, "function": {"arguments": piece}}
            calls.append((_chat_choice(index, {"content": None, "tool_calls": [fragment]}, None, None, None), True))
        calls.append((_chat_choice(index, {}, None, answer.finish_reason, answer.stop_reason), False))
        return calls
    pieces = answer.pieces or [""]
    entries = answer.logprobs
    last = len(pieces) - 1
    chunks: list[Chunk] = []
    for i, piece in enumerate(pieces):
        logprobs = None if entries is None else chat_logprobs(entries[i : i + 1])
        finish = answer.finish_reason if i == last else None
        chunks.append((_chat_choice(index, {"content": piece}, logprobs, finish, answer.stop_reason), True))
    return chunks


def chat_stream(
    cid: str, created: int, model: str, answers: list[Answer], prompt_tokens: int, include_usage: bool, fp: str
) -> Iterator[Frame]:
    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    for index in range(len(answers)):
        role = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        yield sse_event({**head, "choices": [role], "prompt_token_ids": None, "prompt_text": None}), False
    yield from _interleave(head, [_chat_chunks(i, a) for i, a in enumerate(answers)])
    if include_usage:
        yield _usage_frame(head, prompt_tokens, answers, fp), False
    yield SSE_DONE, False


def _completion_chunks(index: int, answer: Answer) -> list[Chunk]:
    pieces = answer.pieces or [""]
    entries = answer.logprobs
    last = len(pieces) - 1
    chunks: list[Chunk] = []
    offset = 0
    for i, piece in enumerate(pieces):
        logprobs = None if entries is None else completion_logprobs(entries[i : i + 1], offset)
        offset += len(piece)
        choice = {
            "index": index,
            "text": piece,
            "logprobs": logprobs,
            "finish_reason": answer.finish_reason if i == last else None,
            "stop_reason": answer.stop_reason if i == last else None,
            "prompt_token_ids": None,
            "token_ids": None,
        }
        chunks.append((choice, True))
    return chunks


def completion_stream(
    cid: str, created: int, model: str, answers: list[Answer], prompt_tokens: int, include_usage: bool, fp: str
) -> Iterator[Frame]:
    head = {"id": cid, "object": "text_completion", "created": created, "model": model}
    yield from _interleave(head, [_completion_chunks(i, a) for i, a in enumerate(answers)])
    if include_usage:
        yield _usage_frame(head, prompt_tokens, answers, fp), False
    yield SSE_DONE, False
