"""Dispatch with fallback: walk the plan's attempts until one backend accepts the request.

For each model of the plan, a few replicas are tried in the pool's order; a retryable failure (connect error,
timeout, 5xx, 429, breaker open, no available replica) moves on, first to another replica and then to the next
model (a *fallback*, recorded with its reason). A 400 saying the prompt exceeds the context window skips ahead to
the next model that declares a larger ``max_context``. Any other non-retryable upstream error (a 4xx the request
caused, or a backend that dropped the connection once it had the request, which is never sent twice) ends the walk
and goes back to the client. ``health.timeouts.total_s`` bounds the whole walk. When nothing
is left, one :class:`AttemptsExhausted` lists every attempt.
"""

from __future__ import annotations

import logging
import re
import time

from gateway.attempt import Attempt
from gateway.context import RequestContext
from gateway.errors import (
    AttemptsExhausted,
    GatewayError,
    NoBackendAvailable,
    PreviousResponseUnavailable,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)
from gateway.policy.schema import PolicySpec, RouteSpec
from gateway.routing.features import RequestFeatures
from gateway.runtime import Gateway
from gateway.transport import Answer, single_attempt
from gateway.upstream.client import Timeouts
from gateway.upstream.pool import Backend

log = logging.getLogger("gateway.dispatch")

REPLICAS_PER_MODEL = 2
"""At most this many replicas of one model are tried before moving down the fallback chain."""

_CONTEXT_ERROR = re.compile(r"context length|context window|max_model_len|too many tokens|input_tokens", re.I)


def is_context_window_error(error: UpstreamError) -> bool:
    """vLLM's 400 for a prompt (or prompt + max_tokens) that does not fit the model's context window."""
    if not isinstance(error, UpstreamStatus) or error.status != 400 or error.passthrough is None:
        return False
    detail = error.passthrough["error"]
    return detail.get("param") == "input_tokens" or bool(_CONTEXT_ERROR.search(str(detail.get("message", ""))))


def larger_context(policy: PolicySpec, attempts: tuple[str, ...], after: int) -> int | None:
    """Index of the first later attempt whose declared ``max_context`` exceeds that of ``attempts[after]``."""
    current = policy.models[attempts[after]].max_context or 0
    for index in range(after + 1, len(attempts)):
        declared = policy.models[attempts[index]].max_context
        if declared is not None and declared > current:
            return index
    return None


def affinity_key(route: RouteSpec, features: RequestFeatures) -> str | None:
    if route.balance == "prefix":
        return features.prefix_text(route.prefix_chars)
    if route.balance == "session":
        if route.session_header is not None:
            return features.headers.get(route.session_header.lower()) or features.user
        return features.user
    return None


async def with_fallbacks(gateway: Gateway, ctx: RequestContext, policy: PolicySpec) -> Answer:
    assert ctx.plan is not None and ctx.features is not None
    plan = ctx.plan
    skipped = plan.primary_skipped
    if skipped is not None:
        ctx.note_fallback(skipped.reason, skipped.model)
    timeouts = policy.health.timeouts
    deadline = ctx.started + timeouts.total_s
    key = affinity_key(plan.route_spec, ctx.features)
    failures: list[tuple[str, str, UpstreamError]] = []
    index = 0
    while index < len(plan.attempts):
        model = plan.attempts[index]
        index += 1
        pool = gateway.registry.pools.get(model)  # None: a reload removed the model mid-request
        replicas = pool.order(REPLICAS_PER_MODEL, key) if pool is not None else []
        if ctx.pinned_backend is not None:
            replicas = [b for b in replicas if b.url == ctx.pinned_backend]
            if not replicas:
                raise PreviousResponseUnavailable(
                    f"the backend of {model} that produced 'previous_response_id' is not available any more; "
                    "start the conversation again without it",
                    param="previous_response_id",
                )
        if not replicas:
            reason = gateway.registry.skip_reason(model, ctx.cohort) or "unhealthy"
            err = NoBackendAvailable(f"no available backend for {model} ({reason})")
            err.fallback_reason = reason
            failures.append((model, "-", err))
            ctx.note_fallback(reason, model)
            continue
        tried = 0
        for backend in replicas:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                failures.append((model, backend.url, UpstreamTimeout(f"total deadline of {timeouts.total_s:g}s")))
                ctx.note_fallback("timeout", model)
                raise exhausted(gateway, ctx, failures)
            if not backend.breaker.acquire():
                continue
            tried += 1
            attempt_timeouts = Timeouts(
                connect_s=min(timeouts.connect_s, remaining),
                first_byte_s=min(timeouts.first_byte_s, remaining),
                total_s=remaining,
                pool_wait_s=min(timeouts.pool_wait_s, remaining),
            )
            try:
                answer = await _attempt(gateway, ctx, backend, attempt_timeouts, policy.limits.max_answer_bytes)
            except UpstreamError as exc:
                if is_context_window_error(exc):
                    jump = larger_context(policy, plan.attempts, index - 1)
                    if jump is None:
                        raise
                    failures.append((model, backend.url, exc))
                    ctx.note_fallback("context_window", model)
                    index = jump
                    break
                if not (
                    exc.retryable or (policy.health.resend_on_disconnect and isinstance(exc, UpstreamDisconnected))
                ):
                    raise
                failures.append((model, backend.url, exc))
                gateway.metrics.upstream_failure(model, backend.label, exc.fallback_reason)
                log.info("attempt %s at %s failed: %s", model, backend.url, exc.describe())
                continue
            ctx.answered_by = model
            return answer
        else:
            if not tried:
                err = NoBackendAvailable(f"every replica of {model} has an open circuit breaker")
                err.fallback_reason = "breaker"
                failures.append((model, "-", err))
            if failures and failures[-1][0] == model:
                ctx.note_fallback(failures[-1][2].fallback_reason, model)
    raise exhausted(gateway, ctx, failures)


def exhausted(gateway: Gateway, ctx: RequestContext, failures: list[tuple[str, str, UpstreamError]]) -> GatewayError:
    """The error for a walk that found no answer; it tells the client when to retry if backends asked for a pause
    (``Retry-After``), including those the planner skipped because they are still pausing."""
    assert ctx.plan is not None
    error = AttemptsExhausted(failures)
    if error.retry_after_s is None:
        models = (*ctx.plan.attempts, *(s.model for s in ctx.plan.skipped))
        error.retry_after_s = gateway.registry.retry_after_s(models)
    return error


async def _attempt(
    gateway: Gateway, ctx: RequestContext, backend: Backend, timeouts: Timeouts, max_answer_bytes: int
) -> Answer:
    """One call under its :class:`Attempt`: a failure or a non-streamed answer ends it here, a stream's relay
    ends it later."""
    attempt = Attempt(gateway.tracing, ctx, backend)
    try:
        answer = await single_attempt(ctx, gateway.client, attempt, timeouts, max_answer_bytes)
    except UpstreamError as exc:
        attempt.finish(exc)
        raise
    except BaseException:
        attempt.finish(cancelled=True)
        raise
    attempt.answered()
    if answer.events is None:
        attempt.finish()
    return answer
