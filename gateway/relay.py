"""Relay a backend's SSE stream to the client, chunk by chunk, never buffered.

Each event gets the registry model name in ``model``; the usage chunk the gateway asked for is kept only when the
client asked for it too. A failure after the first byte cannot fall back any more: the stream ends with one SSE
event in OpenAI's error shape (and no ``[DONE]``), so the client sees an error rather than a truncated answer. A
chunk that is not a completion chunk is such a failure. The request's ``total_s`` bounds the whole stream (the
transport enforces it on every read).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

from gateway.context import RequestContext
from gateway.errors import UpstreamError
from gateway.transport import Answer, note_finish_reasons, note_response_status, note_usage, parse_chunk
from gateway.wire import SSE_DONE, error_body, sse_event

DONE = b"[DONE]"


TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _rewrite_event(ctx: RequestContext, event: dict[str, Any], model: str) -> bytes:
    """A Responses API event: the registry name in its response's ``model``; the final response noted (usage,
    how it ended, the answer for the evaluators)."""
    kind = str(event["type"])
    if kind == "response.output_text.delta":
        ctx.relayed_chunks += 1
    response = event.get("response")
    if isinstance(response, dict):
        if ctx.upstream_model is None and isinstance(response.get("model"), str):
            ctx.upstream_model = response["model"]
        if "model" in response:
            response["model"] = model
        if kind in TERMINAL_EVENTS:
            note_usage(ctx, response.get("usage"))
            note_response_status(ctx, response)
            ctx.answer_json = response
    return b"event: " + kind.encode() + b"\n" + sse_event(event)


def _rewrite(ctx: RequestContext, chunk: dict[str, Any], model: str) -> bytes | None:
    """The SSE frame to send for one upstream chunk, or None to drop it (an unrequested usage chunk)."""
    if ctx.endpoint == "responses":
        return _rewrite_event(ctx, chunk, model)
    if ctx.assembler is not None:
        ctx.assembler.add(chunk)
    choices = chunk.get("choices")
    if chunk.get("usage"):
        note_usage(ctx, chunk["usage"])
        if not choices and not ctx.client_wants_usage:
            return None
        if not ctx.client_wants_usage:
            chunk.pop("usage", None)
    if choices:
        ctx.relayed_chunks += 1
        note_finish_reasons(ctx, choices)
    if "model" in chunk:
        if ctx.upstream_model is None and isinstance(chunk["model"], str):
            ctx.upstream_model = chunk["model"]
        chunk["model"] = model
    return sse_event(chunk)


async def relay_stream(ctx: RequestContext, answer: Answer, on_done: Callable[[], None]) -> AsyncGenerator[bytes, None]:
    """Yield SSE frames for the client; the attempt ends and ``on_done`` runs once however the stream ends (a
    client that went away included)."""
    assert answer.first_chunk is not None and answer.events is not None
    error: UpstreamError | None = None
    finished = False
    try:
        chunk = answer.first_chunk  # parsed once, when the attempt accepted it
        events = answer.events
        while True:
            frame = _rewrite(ctx, chunk, answer.model)
            if frame is not None:
                yield frame
            if chunk.get("type") in TERMINAL_EVENTS and ctx.endpoint == "responses":
                finished = True  # a Responses stream ends with its final event (and no [DONE])
            payload = await anext(events, None)
            if payload is None:
                break
            if payload == DONE:
                if ctx.endpoint != "responses":
                    yield SSE_DONE
                finished = True
                break
            chunk = parse_chunk(payload, ctx.endpoint)
        if not finished:
            raise UpstreamError("the backend ended the stream before it was complete")
    except UpstreamError as exc:
        error = exc
        ctx.stream_error = exc.message
        finished = True
        yield sse_event(error_body(f"upstream stream failed: {exc.message}", "upstream_error", code="stream_error"))
    finally:
        answer.finish(error, cancelled=not finished)
        on_done()
