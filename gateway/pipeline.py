"""The request path, top to bottom: classify → plan → dispatch (with fallback) → relay → evaluate → record.

Classification never waits unless a ``semantic`` cohort rule must see the request's vector to decide (an earlier
rule matching, or a header, decides without one); then it waits at most that rule's ``timeout_s``, and a slow or
absent embedder makes the rule false, never the request fail.

Recording is the metrics, the rollout's evidence and, for a sampled share, a capture record (docs/capture.md),
handed to a writer thread: a request that failed after authentication is recorded too.

``handle`` is the one entry point the API calls. It returns a :class:`ProxyResult` (a JSON body or a stream of SSE
frames) and raises :class:`gateway.errors.GatewayError` for anything the client must hear about as an error. A
request cancelled before its answer (the client went away) leaves no trace but its server span: every attempt it
made has ended itself.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace

from gateway.auth import allow_cohort, allow_model
from gateway.context import RequestContext
from gateway.dispatch import with_fallbacks
from gateway.endpoints import ENDPOINTS, EndpointSpec
from gateway.errors import GatewayError, InvalidRequest, ModelNotFound
from gateway.evaluate import finish, start_shadows
from gateway.record import record
from gateway.relay import relay_stream
from gateway.routing.cohorts import CohortDecision
from gateway.routing.features import RequestFeatures
from gateway.routing.planner import ModelFilter, RolloutWeights
from gateway.runtime import Gateway
from gateway.snapshot import PolicySnapshot
from gateway.spans import close_server_span, open_server_span


@dataclass
class ProxyResult:
    """A JSON ``body`` with ``done`` for the caller to run once it is sent, or a ``stream`` that runs it itself.

    ``done`` (metrics, online evaluation, the end of the span) runs after the answer is out: none of it is the
    client's business, so the client does not wait for it.
    """

    body: bytes | None = None
    stream: AsyncGenerator[bytes, None] | None = None
    done: Callable[[], None] = lambda: None


CHARS_PER_TOKEN = 4
"""For charging a stream that ended before its usage chunk: prompt tokens estimated from the prompt's length."""


async def handle(gateway: Gateway, ctx: RequestContext, snapshot: PolicySnapshot) -> ProxyResult:
    """Serve one parsed request under ``snapshot`` (the policy the API read once for it)."""
    policy = snapshot.policy.spec
    ctx.policy_version = snapshot.version
    ctx.record_content = policy.telemetry.record_content
    ctx.forward_headers = snapshot.forward_headers
    gateway.metrics.inflight.inc()
    open_server_span(gateway.tracing, ctx)
    try:
        authorize(gateway, ctx)
        previous = await previous_response(gateway, ctx)
        if classify(snapshot, ctx).needs_embedding:
            await classify_semantic(gateway, snapshot, ctx)
        plan_route(snapshot, ctx, gateway.model_filter, gateway.rollouts.weight, previous)
        allow_cohort(ctx.client_key, ctx.cohort)
        check_route_limits(ctx)
        answer = await with_fallbacks(gateway, ctx, policy)
    except GatewayError as exc:
        ctx.status = exc.status
        gateway.metrics.inflight.dec()
        gateway.rollouts.observe(ctx)
        record(gateway.metrics, ctx)
        gateway.capture.primary(ctx, None, exc)
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
        charge(gateway, ctx)
        finished = finish(gateway, ctx, primary)
        remember_response(gateway, ctx)
        gateway.rollouts.observe(ctx)
        record(gateway.metrics, ctx)
        gateway.capture.primary(ctx, finished)
        close_server_span(ctx, ctx.status)

    if answer.events is None:
        return ProxyResult(body=answer.body, done=done)
    return ProxyResult(stream=relay_stream(ctx, answer, done))


def charge(gateway: Gateway, ctx: RequestContext) -> None:
    """Tokens against the key's ``tokens_per_min``: the answer's usage, or, for a stream that ended before its
    usage chunk (a client that left early), an estimate from the prompt and the chunks relayed (about a token
    each, as vLLM streams them)."""
    key = ctx.client_key
    if key is None or key.spec.rate_limit is None:
        return
    if ctx.usage is not None:
        tokens = ctx.usage.total_tokens
    else:
        prompt = ctx.features.prompt_chars // CHARS_PER_TOKEN if ctx.features is not None else 0
        tokens = prompt + ctx.relayed_chunks
    gateway.limiter.charge_tokens(key.name, key.spec.rate_limit, tokens)


def wrong_kind(snapshot: PolicySnapshot, model: str, route: str, endpoint: EndpointSpec) -> str:
    named = snapshot.policy.spec.models.get(model)
    if named is not None:
        serves = "/v1/embeddings only" if named.kind == "embedding" else f"no {endpoint.path}"
        return f"model '{model}' is kind: {named.kind}: it serves {serves}"
    if endpoint.embedding:
        return f"the route '{route}' has no model of kind: embedding to serve {endpoint.path}"
    return f"the route '{route}' has no model other than kind: embedding to serve {endpoint.path}"


async def previous_response(gateway: Gateway, ctx: RequestContext) -> tuple[str, str] | None:
    """Where the response a Responses API request continues was produced: this instance's memory, else (with
    fleet state in Redis) the fleet's, within the store's time bound; None when unknown."""
    response_id = ctx.body.get("previous_response_id") if ctx.endpoint == "responses" else None
    if not isinstance(response_id, str):
        return None
    produced = gateway.responses.lookup(response_id)
    if produced is not None:
        return produced.model, produced.backend
    return await gateway.fleet.find_response(response_id)


def remember_response(gateway: Gateway, ctx: RequestContext) -> None:
    """Where a Responses API answer was produced, for a later request that continues it."""
    answer = ctx.answer_json
    if ctx.endpoint != "responses" or ctx.answered_by is None or not ctx.attempts or not isinstance(answer, dict):
        return
    response_id = answer.get("id")
    if isinstance(response_id, str) and 0 < len(response_id) <= 256:
        gateway.responses.remember(response_id, ctx.answered_by, ctx.attempts[-1].backend)
        gateway.fleet.note_response(response_id, ctx.answered_by, ctx.attempts[-1].backend)


def authorize(gateway: Gateway, ctx: RequestContext) -> None:
    """The key may use the requested model and is within its rate limits (auth itself happened at the API)."""
    key = ctx.client_key
    if key is None:
        return
    allow_model(key, str(ctx.body.get("model")))
    gateway.limiter.admit(key.name, key.spec.rate_limit)


def check_route_limits(ctx: RequestContext) -> None:
    assert ctx.plan is not None
    limit = ctx.plan.route_spec.max_tokens
    asked = ctx.body.get("max_completion_tokens", ctx.body.get("max_tokens", ctx.body.get("max_output_tokens")))
    if limit is not None and isinstance(asked, int) and asked > limit:
        raise InvalidRequest(f"max_tokens={asked} is over this route's limit of {limit}", param="max_tokens")


def classify(snapshot: PolicySnapshot, ctx: RequestContext) -> CohortDecision:
    """The request's cohort, without waiting; with ``needs_embedding`` set a semantic rule must see the request's
    vector before the cohort is known (:func:`classify_semantic`)."""
    model = ctx.body.get("model")
    if not isinstance(model, str) or not snapshot.knows_model(model):
        raise ModelNotFound(str(model))
    features = ctx.features = RequestFeatures(ctx.body, ctx.headers, ctx.client_key.name if ctx.client_key else None)
    decision = ctx.decision = snapshot.classifier.classify(features)
    return decision


async def classify_semantic(gateway: Gateway, snapshot: PolicySnapshot, ctx: RequestContext) -> None:
    """The cohort by the request's vector (cached by text digest); each rule waits at most its ``timeout_s``."""
    assert ctx.features is not None
    ctx.decision = await snapshot.classifier.classify_async(ctx.features, gateway.embedder)


def plan_route(
    snapshot: PolicySnapshot,
    ctx: RequestContext,
    skip: ModelFilter,
    rollouts: RolloutWeights | None = None,
    previous: tuple[str, str] | None = None,
) -> None:
    """``previous``: the (model, backend) that produced the response this request continues, when known."""
    assert ctx.decision is not None and ctx.features is not None
    features = ctx.features
    endpoint = ENDPOINTS[ctx.endpoint]
    plan = ctx.plan = snapshot.planner.plan(
        ctx.decision.cohort, features, ctx.request_id, skip, rollouts, embedding=endpoint.embedding
    )
    if not plan.primary:
        raise InvalidRequest(wrong_kind(snapshot, features.model, plan.route, endpoint), param="model")
    if previous is not None:  # the conversation lives on that backend only: no other attempt
        ctx.pinned_backend = previous[1]
        ctx.plan = replace(plan, primary=previous[0], attempts=(previous[0],), skipped=())
