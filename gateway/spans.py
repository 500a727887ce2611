"""Span bookkeeping for the request path: open and close the server and attempt spans from a RequestContext.

Kept apart from :mod:`gateway.telemetry.tracing` (which knows OpenTelemetry, not the request context: telemetry
imports no stage) so each stage makes one call here instead of setting attributes itself.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from opentelemetry.trace import INVALID_SPAN, Span, Status, StatusCode

from gateway.context import RequestContext
from gateway.endpoints import ENDPOINTS
from gateway.telemetry.tracing import Tracing, end_attempt, request_attributes
from gateway.wire import dumps


def open_server_span(tracing: Tracing, ctx: RequestContext) -> None:
    ctx.server_span = tracing.server_span(f"POST {ENDPOINTS[ctx.endpoint].path}", ctx.headers, ctx.request_id)


def close_server_span(ctx: RequestContext, status: int) -> None:
    span = ctx.server_span
    if span.is_recording():
        attributes: dict[str, str | int | float] = {
            "http.request.method": "POST",
            "url.path": ENDPOINTS[ctx.endpoint].path,
            "http.response.status_code": status,
            "gateway.cohort": ctx.cohort,
            "gateway.route": ctx.route,
            "gateway.policy.version": ctx.policy_version,
            "gateway.requested_model": str(ctx.body.get("model", "")),
            "gateway.model": ctx.answered_by or "",
            "gateway.attempts": len(ctx.attempts),
        }
        score = _cohort_score(ctx)
        if score is not None:
            attributes["gateway.cohort.score"] = score
        if ctx.fallback is not None:
            attributes["gateway.fallback.reason"] = ctx.fallback.partition(":")[0]
            attributes["gateway.fallback.from"] = ctx.fallback.partition(":")[2]
        span.set_attributes(attributes)
        if status >= 500 or ctx.stream_error:
            span.set_status(Status(StatusCode.ERROR, ctx.stream_error or f"HTTP {status}"))
    span.end()


def _cohort_score(ctx: RequestContext) -> float | None:
    """The similarity that put the request in its cohort, when a semantic rule did."""
    return ctx.decision.score if ctx.decision is not None else None


def open_attempt_span(tracing: Tracing, ctx: RequestContext, model: str, backend_url: str, number: int) -> Span:
    if not tracing.enabled:
        return INVALID_SPAN
    address = urlsplit(backend_url)
    attributes = {
        **request_attributes(ctx.body),
        "server.address": address.hostname,
        "server.port": address.port,
        "gateway.requested_model": str(ctx.body.get("model", "")),
        "gateway.cohort": ctx.cohort,
        "gateway.cohort.score": _cohort_score(ctx),
        "gateway.route": ctx.route,
        "gateway.attempt": number,
        "gateway.policy.version": ctx.policy_version,
        "gateway.mirror": False,
        "gateway.fallback.reason": ctx.fallback.partition(":")[0] if ctx.fallback else None,
    }
    if ctx.record_content:
        prompt = ctx.body.get("messages", ctx.body.get("prompt", ctx.body.get("input")))
        if ctx.endpoint == "responses":
            prompt = {"instructions": ctx.body.get("instructions"), "input": prompt}
        attributes["gen_ai.prompt"] = dumps(prompt).decode()
    return tracing.attempt_span(ctx.server_span, ctx.endpoint, model, attributes)


def close_attempt_span(
    ctx: RequestContext, span: Span, error: str | None = None, error_type: str | None = None
) -> None:
    usage = ctx.usage if error is None else None
    text = None
    if span.is_recording() and error is None and ctx.record_content:
        text = _completion_text(ctx)
    end_attempt(
        span,
        response_model=ctx.upstream_model,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage and ENDPOINTS[ctx.endpoint].output_tokens else None,
        finish_reasons=ctx.finish_reasons if error is None else (),
        error_type=error_type or ("stream_error" if error else None),
        error_message=error,
        completion_text=text,
    )


def _completion_text(ctx: RequestContext) -> str | None:
    if ctx.assembler is not None:
        return ctx.assembler.finish(ctx.body, ttft_s=None, total_s=0.0).content
    choices = (ctx.answer_json or {}).get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], dict) else {}
    message = first.get("message")
    content = message.get("content") if isinstance(message, dict) else first.get("text")
    return content if isinstance(content, str) else None
