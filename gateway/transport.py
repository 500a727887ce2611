"""One attempt at one backend: build the upstream request, send it, and check the answer before it is accepted.

:func:`build_request` is the one place an upstream request is made, for primary attempts, mirror copies and gate
probes alike: the client's body with ``model`` set to the backend's served name and gateway-only fields removed,
usage asked for on streams (token counts are always known), and the backend's own key. :func:`single_attempt`
accepts an answer only when it is what the endpoint promises: a JSON object with ``choices``, or an event stream
whose first event is one. Anything else is a 502-class :class:`UpstreamError` raised before the client saw a
byte, so the request may still fall back.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.attempt import Attempt
from gateway.context import RequestContext, Usage
from gateway.endpoints import ENDPOINTS, Endpoint
from gateway.errors import UpstreamBadAnswer, UpstreamError, UpstreamStatus
from gateway.telemetry.tracing import Tracing
from gateway.upstream.client import ConnectionSettings, Timeouts, UpstreamClient, UpstreamResponse
from gateway.upstream.pool import Backend
from gateway.wire import dumps, loads

GATEWAY_ONLY_FIELDS = ("metadata",)
MAX_RETRY_AFTER_S = 300.0
MAX_ERROR_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    url: str
    body: bytes
    headers: dict[str, str]
    settings: ConnectionSettings


def build_request(
    backend: Backend, endpoint: str, body: Mapping[str, Any], headers: Mapping[str, str], *, stream: bool
) -> UpstreamRequest:
    """The request ``backend`` gets for ``body``; ``headers`` are what the client may pass on (never its key)."""
    payload = {k: v for k, v in body.items() if k not in GATEWAY_ONLY_FIELDS}
    payload["model"] = backend.served_name
    spec = ENDPOINTS[endpoint]  # type: ignore[index]
    if not spec.streams or spec.name == "responses":  # no stream_options there (usage comes in response.completed)
        payload.pop("stream_options", None)
        if not stream and payload.get("stream"):
            payload["stream"] = False
    elif stream:
        options = payload.get("stream_options")
        payload["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    else:
        payload.pop("stream_options", None)  # vLLM refuses stream_options without stream
        if payload.get("stream"):
            payload["stream"] = False
    request_headers = {"content-type": "application/json", **headers}
    if backend.authorization is not None:
        request_headers["authorization"] = backend.authorization
    return UpstreamRequest(backend.url + spec.path, dumps(payload), request_headers, backend.connection)


def client_headers(ctx: RequestContext) -> dict[str, str]:
    """The client's headers a backend may see: the request id, trace context and what the policy forwards."""
    headers = {"x-request-id": ctx.request_id}
    for name in ("traceparent", "tracestate", *ctx.forward_headers):  # an attempt span overrides the trace ones
        value = ctx.headers.get(name)
        if value is not None:
            headers[name] = value
    return headers


@dataclass(slots=True)
class Answer:
    """A backend's accepted answer: a whole JSON body, or a stream whose first event already arrived.

    ``attempt`` is still open for a stream: whoever finishes relaying it calls :meth:`finish`, exactly once.
    """

    model: str
    attempt: Attempt
    body: bytes | None = None
    first_chunk: dict[str, Any] | None = None
    events: AsyncIterator[bytes] | None = None
    response: UpstreamResponse | None = None

    def finish(self, error: UpstreamError | None = None, *, cancelled: bool = False) -> None:
        if self.response is not None:
            self.response.close()
        self.attempt.finish(error, cancelled=cancelled)


def parse_json_answer(ctx: RequestContext, raw: bytes, model: str) -> bytes:
    """The answer for the client (``model`` named as the registry does); usage and finish reasons noted."""
    spec = ENDPOINTS[ctx.endpoint]
    try:
        parsed: Any = loads(raw)
    except ValueError:
        raise UpstreamBadAnswer("the backend's answer is not JSON") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get(spec.answer_list), list):
        raise UpstreamBadAnswer(f"the backend's answer has no list of {spec.answer_list}")
    ctx.upstream_model = parsed.get("model") if isinstance(parsed.get("model"), str) else None
    parsed["model"] = model
    ctx.answer_json = parsed
    note_usage(ctx, parsed.get("usage"))
    if spec.answer_list == "choices":
        note_finish_reasons(ctx, parsed["choices"])
    elif spec.name == "responses":
        note_response_status(ctx, parsed)
    return dumps(parsed)


def parse_chunk(payload: bytes, endpoint: Endpoint = "chat") -> dict[str, Any]:
    """One streamed event: a completion chunk (an object whose ``choices`` is a list), or for the Responses API
    an object with a ``type``; anything else breaks the stream."""
    try:
        chunk: Any = loads(payload)
    except ValueError:
        raise UpstreamBadAnswer("the backend sent a stream event that is not JSON") from None
    if endpoint == "responses":
        if not isinstance(chunk, dict) or not isinstance(chunk.get("type"), str):
            raise UpstreamBadAnswer("the backend sent a stream event that is not a Responses API event")
        return chunk
    if not isinstance(chunk, dict) or not isinstance(chunk.get("choices", []), list):
        raise UpstreamBadAnswer("the backend sent a stream event that is not a completion chunk")
    return chunk


def note_usage(ctx: RequestContext, usage: Any) -> None:
    """Token counts from ``usage``; values of the wrong type count as unknown (0), never as an error."""
    if isinstance(usage, dict):
        spec = ENDPOINTS[ctx.endpoint]
        output = _count(usage.get(spec.output_tokens)) if spec.output_tokens is not None else 0
        ctx.usage = Usage(_count(usage.get(spec.input_tokens)), output)


def note_response_status(ctx: RequestContext, response: dict[str, Any]) -> None:
    """A Responses API answer's end: ``completed``, or ``incomplete`` with its reason (``max_output_tokens``)."""
    status = response.get("status")
    details = response.get("incomplete_details")
    if isinstance(details, dict) and isinstance(details.get("reason"), str):
        ctx.finish_reasons.append("length" if details["reason"] == "max_output_tokens" else details["reason"])
    elif status == "completed":
        ctx.finish_reasons.append("stop")


def note_finish_reasons(ctx: RequestContext, choices: list[Any]) -> None:
    for choice in choices:
        if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
            ctx.finish_reasons.append(choice["finish_reason"])


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53 else 0


async def single_attempt(
    ctx: RequestContext, client: UpstreamClient, attempt: Attempt, timeouts: Timeouts, max_answer_bytes: int
) -> Answer:
    """Send the request to ``attempt.backend`` and wait for an acceptable answer (or its first event)."""
    backend = attempt.backend
    request = build_request(backend, ctx.endpoint, ctx.body, client_headers(ctx), stream=ctx.stream)
    Tracing.inject(attempt.span, request.headers)
    started = time.perf_counter()
    try:
        response = await client.post(request.url, request.body, request.headers, timeouts, request.settings)
        attempt.record.status = response.status
        if response.status != 200:
            retry_after = _retry_after(response)
            raw = await response.read(min(max_answer_bytes, MAX_ERROR_BYTES))
            if response.status < 400:  # 204, 304, a redirect: not an answer a JSON endpoint gives
                raise UpstreamBadAnswer(f"the backend answered {response.status} without a completion")
            raise UpstreamStatus(response.status, raw, retry_after)
        if not ctx.stream:
            raw = await response.read(max_answer_bytes)
            return Answer(backend.model, attempt, body=parse_json_answer(ctx, raw, backend.model))
        events = response.events(max_answer_bytes)
        try:
            first = await anext(events)
            if first == b"[DONE]":
                raise UpstreamBadAnswer("the backend ended the stream before its first chunk")
            first_chunk = parse_chunk(first, ctx.endpoint)
        except StopAsyncIteration:
            response.close()
            raise UpstreamBadAnswer("the backend closed the stream before its first event") from None
        except BaseException:
            response.close()
            raise
        return Answer(backend.model, attempt, first_chunk=first_chunk, events=events, response=response)
    except UpstreamError as exc:
        exc.backend = exc.backend or backend.url
        raise
    finally:
        elapsed = time.perf_counter() - started
        attempt.record.upstream_s += elapsed
        ctx.upstream_s += elapsed


def _retry_after(response: UpstreamResponse) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds (an HTTP date is rare from vLLM and ignored)."""
    value = response.headers.get("retry-after")
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), MAX_RETRY_AFTER_S)
