"""Dispatch with fallback: walk the plan's attempts until one backend accepts the request.

For each model of the plan, a few replicas are tried in the pool's order; a retryable failure (connect error,
timeout, 5xx, 429) moves on, first to another replica and then to the next model (a *fallback*, recorded with its
reason). A non-retryable upstream error (a 4xx the request caused) ends the walk and goes back to the client. When
nothing is left, one :class:`AttemptsExhausted` lists every attempt.
"""

from __future__ import annotations

from gateway.context import AttemptRecord, RequestContext
from gateway.errors import AttemptsExhausted, NoBackendAvailable, UpstreamError
from gateway.runtime import Gateway
from gateway.transport import Answer, single_attempt
from gateway.upstream.client import Timeouts

REPLICAS_PER_MODEL = 2
"""At most this many replicas of one model are tried before moving down the fallback chain."""


async def with_fallbacks(gateway: Gateway, ctx: RequestContext) -> Answer:
    assert ctx.plan is not None
    plan = ctx.plan
    skipped = plan.primary_skipped
    if skipped is not None:
        ctx.note_fallback(skipped.reason, skipped.model)
    health = gateway.snapshot.policy.spec.health
    timeouts = Timeouts(connect_s=health.timeouts.connect_s, first_byte_s=health.timeouts.first_byte_s)
    failures: list[tuple[str, str, UpstreamError]] = []
    for model in plan.attempts:
        pool = gateway.registry.pools[model]
        replicas = pool.order(REPLICAS_PER_MODEL)
        if not replicas:
            err = NoBackendAvailable(f"no available backend for {model}")
            failures.append((model, "-", err))
            ctx.note_fallback(err.fallback_reason, model)
            continue
        for backend in replicas:
            record = AttemptRecord(model=model, backend=backend.url, number=len(ctx.attempts) + 1)
            ctx.attempts.append(record)
            backend.inflight += 1
            try:
                answer = await single_attempt(ctx, gateway.client, backend, timeouts, record)
            except UpstreamError as exc:
                backend.inflight -= 1
                record.outcome = exc.fallback_reason
                record.error = exc.describe()
                if not exc.retryable:
                    raise
                failures.append((model, backend.url, exc))
                gateway.metrics.upstream_failure(model, backend.label, exc.fallback_reason)
                continue
            except BaseException:
                backend.inflight -= 1
                raise
            if answer.events is None:
                backend.inflight -= 1  # a stream keeps its slot until the relay ends
            ctx.answered_by = model
            return answer
        if failures and failures[-1][0] == model:
            ctx.note_fallback(failures[-1][2].fallback_reason, model)
    raise AttemptsExhausted(failures)
