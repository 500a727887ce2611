"""Relay a backend's SSE stream to the client, chunk by chunk, never buffered.

Each event gets the registry model name in ``model``; the usage chunk the gateway asked for is kept only when the
client asked for it too. A failure after the first byte cannot fall back any more: the stream ends with one SSE
event in OpenAI's error shape (and no ``[DONE]``), so the client sees an error rather than a truncated answer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from gateway.context import RequestContext
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.spans import close_attempt_span
from gateway.transport import Answer, note_usage
from gateway.wire import SSE_DONE, error_body, loads, sse_event

DONE = b"[DONE]"


def _rewrite(ctx: RequestContext, payload: bytes, model: str) -> bytes | None:
    """The SSE frame to send for one upstream payload, or None to drop it (an unrequested usage chunk)."""
    try:
        chunk: Any = loads(payload)
    except ValueError:
        return b"data: " + payload + b"\n\n"
    if not isinstance(chunk, dict):
        return b"data: " + payload + b"\n\n"
    if ctx.assembler is not None:
        ctx.assembler.add(chunk)
    choices = chunk.get("choices")
    if chunk.get("usage"):
        note_usage(ctx, chunk["usage"])
        if not choices and not ctx.client_wants_usage:
            return None
        if not ctx.client_wants_usage:
            chunk.pop("usage", None)
    for choice in choices or ():
        if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
            ctx.finish_reasons.append(choice["finish_reason"])
    if "model" in chunk:
        if ctx.upstream_model is None and isinstance(chunk["model"], str):
            ctx.upstream_model = chunk["model"]
        chunk["model"] = model
    return sse_event(chunk)


async def relay_stream(
    ctx: RequestContext, answer: Answer, on_done: Callable[[], None], deadline: float
) -> AsyncGenerator[bytes, None]:
    """Yield SSE frames for the client; ``on_done`` runs once however the stream ends (cancel included).

    ``deadline`` (a ``time.perf_counter`` value) is the request's total deadline: checked between chunks, while
    each wait for a chunk is bounded by the transport's read timeout.
    """
    assert answer.first_event is not None and answer.events is not None and answer.response is not None
    saw_done = False
    try:
        payload: bytes | None = answer.first_event
        events = answer.events
        while payload is not None:
            if payload == DONE:
                saw_done = True
                yield SSE_DONE
                break
            frame = _rewrite(ctx, payload, answer.model)
            if frame is not None:
                yield frame
            if time.perf_counter() > deadline:
                raise UpstreamTimeout("the request's total deadline passed mid-stream")
            payload = await anext(events, None)
        if not saw_done:
            raise UpstreamError("the backend ended the stream before it was complete")
    except UpstreamError as exc:
        ctx.stream_error = exc.message
        answer.backend.breaker.record(ok=False)
        yield sse_event(error_body(f"upstream stream failed: {exc.message}", "upstream_error", code="stream_error"))
    finally:
        answer.response.close()
        answer.backend.inflight -= 1
        close_attempt_span(ctx, answer.span, error=ctx.stream_error)
        on_done()
