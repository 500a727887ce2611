"""The request path, top to bottom: classify → plan → dispatch (with fallback) → relay → evaluate → record.

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
from gateway.evaluate import finish, start_shadows
from gateway.record import record
from gateway.relay import relay_stream
from gateway.routing.features import RequestFeatures
from gateway.routing.planner import ModelFilter
from gateway.runtime import Gateway
from gateway.snapshot import PolicySnapshot
from gateway.spans import close_server_span, open_server_span


@dataclass
class ProxyResult:
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None


async def handle(gateway: Gateway, ctx: RequestContext) -> ProxyResult:
    snapshot = gateway.snapshot  # read once: a reload mid-request does not change this request's policy
    policy = snapshot.policy.spec
    ctx.policy_version = snapshot.version
    ctx.record_content = policy.telemetry.record_content
    gateway.metrics.inflight.inc()
    open_server_span(gateway.tracing, ctx)
    try:
        classify_and_plan(snapshot, ctx, gateway.model_filter)
        answer = await with_fallbacks(gateway, ctx, policy)
    except GatewayError as exc:
        ctx.status = exc.status
        gateway.metrics.inflight.dec()
        record(gateway.metrics, ctx)
        close_server_span(ctx, exc.status)
        raise
    except BaseException:
        gateway.metrics.inflight.dec()
        close_server_span(ctx, 499)
        raise
    ctx.first_byte_at = time.perf_counter()
    primary = start_shadows(gateway, ctx, policy)

    def done() -> None:
        gateway.metrics.inflight.dec()
        finish(gateway, ctx, primary)
        record(gateway.metrics, ctx)
        close_server_span(ctx, ctx.status)

    if answer.events is None:
        done()
        return ProxyResult(body=answer.body)
    deadline = ctx.started + policy.health.timeouts.total_s
    return ProxyResult(stream=relay_stream(ctx, answer, done, deadline))


def classify_and_plan(snapshot: PolicySnapshot, ctx: RequestContext, skip: ModelFilter) -> None:
    model = ctx.body.get("model")
    if not isinstance(model, str) or not snapshot.knows_model(model):
        raise ModelNotFound(str(model))
    features = RequestFeatures(ctx.body, ctx.headers)
    ctx.decision = snapshot.classifier.classify(features)
    ctx.plan = snapshot.planner.plan(ctx.decision.cohort, features, ctx.request_id, skip)
