"""The request path, top to bottom: classify → plan → dispatch (with fallback) → relay → record.

``handle`` is the one entry point the API calls. It returns a :class:`ProxyResult` (a JSON body or a stream of SSE
frames) and raises :class:`gateway.errors.GatewayError` for anything the client must hear about as an error.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.context import RequestContext
from gateway.dispatch import with_fallbacks
from gateway.errors import GatewayError, ModelNotFound
from gateway.relay import relay_stream
from gateway.routing.features import RequestFeatures
from gateway.routing.planner import ModelFilter
from gateway.runtime import Gateway
from gateway.snapshot import PolicySnapshot


@dataclass
class ProxyResult:
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None


async def handle(gateway: Gateway, ctx: RequestContext) -> ProxyResult:
    snapshot = gateway.snapshot  # read once: a reload mid-request does not change this request's policy
    ctx.policy_version = snapshot.version
    gateway.metrics.inflight.inc()
    try:
        classify_and_plan(snapshot, ctx, gateway.model_filter)
        answer = await with_fallbacks(gateway, ctx, snapshot.policy.spec)
    except GatewayError as exc:
        ctx.status = exc.status
        gateway.metrics.inflight.dec()
        record(gateway, ctx)
        raise
    except BaseException:
        gateway.metrics.inflight.dec()
        raise
    if answer.events is None:
        ctx.first_byte_at = time.perf_counter()
        gateway.metrics.inflight.dec()
        record(gateway, ctx)
        return ProxyResult(body=answer.body)
    ctx.first_byte_at = time.perf_counter()

    def done() -> None:
        gateway.metrics.inflight.dec()
        record(gateway, ctx)

    deadline = ctx.started + snapshot.policy.spec.health.timeouts.total_s
    return ProxyResult(stream=relay_stream(ctx, answer, done, deadline))


def classify_and_plan(snapshot: PolicySnapshot, ctx: RequestContext, skip: ModelFilter) -> None:
    model = ctx.body.get("model")
    if not isinstance(model, str) or not snapshot.knows_model(model):
        raise ModelNotFound(str(model))
    features = RequestFeatures(ctx.body, ctx.headers)
    ctx.decision = snapshot.classifier.classify(features)
    ctx.plan = snapshot.planner.plan(ctx.decision.cohort, features, ctx.request_id, skip)


def overhead_s(ctx: RequestContext) -> float:
    """Time the gateway added up to the first byte: elapsed minus time spent waiting on backends."""
    end = ctx.first_byte_at or time.perf_counter()
    return max(0.0, end - ctx.started - ctx.upstream_s)


def record(gateway: Gateway, ctx: RequestContext) -> None:
    m = gateway.metrics
    model = ctx.answered_by or "none"
    cohort, route = ctx.cohort or "none", ctx.route or "none"
    status = "stream_error" if ctx.stream_error else f"{ctx.status // 100}xx"
    m.requests.labels(cohort, route, model, status).inc()
    m.duration.labels(cohort, route, model).observe(time.perf_counter() - ctx.started)
    m.overhead.observe(overhead_s(ctx))
    if ctx.fallback is not None:
        m.fallbacks.labels(ctx.fallback.split(":", 1)[0], cohort, model).inc()
    if ctx.answered_by is None:
        return
    if ctx.first_byte_at is not None:
        m.ttft.labels(cohort, model).observe(ctx.first_byte_at - ctx.started)
    if ctx.usage is not None:
        m.tokens.labels("input", cohort, model).inc(ctx.usage.prompt_tokens)
        m.tokens.labels("output", cohort, model).inc(ctx.usage.completion_tokens)
        if ctx.stream and ctx.first_byte_at is not None and ctx.usage.completion_tokens > 1:
            decode = time.perf_counter() - ctx.first_byte_at
            m.tpot.labels(cohort, model).observe(decode / (ctx.usage.completion_tokens - 1))
