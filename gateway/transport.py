"""One attempt at one backend: build the upstream body, send it, and turn the answer into an :class:`Answer`.

The body sent to vLLM is the client's with ``model`` rewritten to the backend's served name, gateway-only fields
removed, and (for streams) usage requested so token counts are always known. A stream attempt waits for its first
event before it counts as answered: until then a failure may still fall back.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import Span

from gateway.context import AttemptRecord, RequestContext, Usage
from gateway.errors import UpstreamError, UpstreamStatus
from gateway.telemetry.tracing import Tracing
from gateway.upstream.client import Timeouts, UpstreamClient, UpstreamResponse
from gateway.upstream.pool import Backend
from gateway.wire import dumps, loads

GATEWAY_ONLY_FIELDS = ("metadata",)
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@dataclass
class Answer:
    """A backend's accepted answer: a whole JSON body, or a stream whose first event already arrived."""

    model: str
    backend: Backend
    span: Span
    body: bytes | None = None
    first_event: bytes | None = None
    events: AsyncIterator[bytes] | None = None
    response: UpstreamResponse | None = None


def upstream_body(ctx: RequestContext, served_name: str) -> bytes:
    body = {k: v for k, v in ctx.body.items() if k not in GATEWAY_ONLY_FIELDS}
    body["model"] = served_name
    if ctx.stream:
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    return dumps(body)


def upstream_headers(ctx: RequestContext) -> dict[str, str]:
    """Headers for vLLM: only what the policy allows; never the client's ``Authorization``."""
    headers = {"content-type": "application/json", "x-request-id": ctx.request_id}
    for name in ("traceparent", "tracestate", *ctx.forward_headers):  # an attempt span overrides the trace ones
        value = ctx.headers.get(name)
        if value is not None:
            headers[name] = value
    return headers


def rewrite_json_answer(ctx: RequestContext, raw: bytes, model: str) -> bytes:
    """Name the registry model in ``model`` and note usage and finish reasons; malformed bodies pass as is."""
    try:
        parsed: Any = loads(raw)
    except ValueError:
        return raw
    if not isinstance(parsed, dict):
        return raw
    ctx.upstream_model = parsed.get("model") if isinstance(parsed.get("model"), str) else None
    parsed["model"] = model
    ctx.answer_json = parsed
    note_usage(ctx, parsed.get("usage"))
    for choice in parsed.get("choices") or ():
        if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
            ctx.finish_reasons.append(choice["finish_reason"])
    return dumps(parsed)


def note_usage(ctx: RequestContext, usage: Any) -> None:
    if isinstance(usage, dict):
        ctx.usage = Usage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )


async def single_attempt(
    ctx: RequestContext,
    client: UpstreamClient,
    backend: Backend,
    timeouts: Timeouts,
    record: AttemptRecord,
    span: Span,
) -> Answer:
    url = backend.url + PATHS[ctx.endpoint]
    headers = upstream_headers(ctx)
    if backend.authorization is not None:
        headers["authorization"] = backend.authorization
    Tracing.inject(span, headers)
    started = time.perf_counter()
    try:
        response = await client.post(url, upstream_body(ctx, backend.served_name), headers, timeouts)
        record.status = response.status
        if response.status != 200:
            raise UpstreamStatus(response.status, await response.read())
        if not ctx.stream:
            raw = await response.read()
            return Answer(backend.model, backend, span, body=rewrite_json_answer(ctx, raw, backend.model))
        events = response.events()
        try:
            first = await anext(events)
        except StopAsyncIteration:
            response.close()
            raise UpstreamStatus(502, b"the backend closed the stream before its first event") from None
        except BaseException:
            response.close()
            raise
        return Answer(backend.model, backend, span, first_event=first, events=events, response=response)
    except UpstreamError as exc:
        exc.backend = exc.backend or backend.url
        raise
    finally:
        elapsed = time.perf_counter() - started
        record.upstream_s += elapsed
        ctx.upstream_s += elapsed
