"""Record: one request's outcome into the Prometheus series (spans are recorded by the tracing layer)."""

from __future__ import annotations

import time

from gateway.context import RequestContext
from gateway.endpoints import ENDPOINTS
from gateway.telemetry.metrics import GatewayMetrics


def overhead_s(ctx: RequestContext) -> float:
    """Time the gateway added up to the first byte: elapsed minus time spent waiting on backends."""
    end = ctx.first_byte_at or time.perf_counter()
    return max(0.0, end - ctx.started - ctx.upstream_s)


def record(m: GatewayMetrics, ctx: RequestContext) -> None:
    model = ctx.answered_by or "none"
    cohort, route = ctx.cohort or "none", ctx.route or "none"
    status = "stream_error" if ctx.stream_error else f"{ctx.status // 100}xx"
    m.requests.labels(cohort, route, model, status).inc()
    m.duration.labels(cohort, route, model).observe(time.perf_counter() - ctx.started)
    m.overhead.observe(overhead_s(ctx))
    if ctx.fallback is not None:
        reason, _, from_model = ctx.fallback.partition(":")
        m.fallbacks.labels(reason, cohort, from_model).inc()
    if ctx.answered_by is None:
        return
    if ctx.first_byte_at is not None:
        m.ttft.labels(cohort, model).observe(ctx.first_byte_at - ctx.started)
    operation = ENDPOINTS[ctx.endpoint].operation
    m.genai_duration.labels(operation, "vllm", model).observe(time.perf_counter() - ctx.started)
    if ctx.usage is not None:
        m.tokens.labels("input", cohort, model).inc(ctx.usage.prompt_tokens)
        m.genai_token_usage.labels(operation, "vllm", model, "input").observe(ctx.usage.prompt_tokens)
        if ENDPOINTS[ctx.endpoint].output_tokens is None:
            return  # embeddings produce no tokens: no output series at all (GenAI conventions)
        m.tokens.labels("output", cohort, model).inc(ctx.usage.completion_tokens)
        m.genai_token_usage.labels(operation, "vllm", model, "output").observe(ctx.usage.completion_tokens)
        if ctx.stream and ctx.first_byte_at is not None and ctx.usage.completion_tokens > 1:
            decode = time.perf_counter() - ctx.first_byte_at
            m.tpot.labels(cohort, model).observe(decode / (ctx.usage.completion_tokens - 1))
