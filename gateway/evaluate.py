"""Evaluate: after the primary answer, start shadow copies and run the online evaluators, never in the way.

``start_shadows`` runs once the primary was accepted: sampled mirror copies of the route, plus probe copies for
models a tripped eval gate keeps off this cohort. ``finish`` runs once the primary answer is complete (for a
stream, at its end): it hands the answer to waiting shadows for the agreement checks and schedules the online
evaluators on the event loop's next turn, so the client's response never waits for them.
"""

from __future__ import annotations

import asyncio
import time

from gateway.context import RequestContext
from gateway.evals.answer import FinishedAnswer, StreamAssembler, answer_from_json
from gateway.evals.responses_answer import answer_from_response
from gateway.mirror import ShadowJob
from gateway.policy.schema import MirrorSpec, PolicySpec
from gateway.routing.planner import unit_hash
from gateway.runtime import Gateway
from gateway.transport import client_headers

PROBE_DEFAULTS = MirrorSpec(to=["probe"])


def shadow_targets(gateway: Gateway, ctx: RequestContext, policy: PolicySpec) -> list[tuple[str, str, MirrorSpec]]:
    """(model, reason, limits) for every shadow copy this request gets; never the model that answered it."""
    assert ctx.plan is not None
    targets: list[tuple[str, str, MirrorSpec]] = []
    if ctx.endpoint == "embeddings" or ctx.pinned_backend is not None:
        return targets  # no answer text to judge; a continuation's conversation lives on one backend only
    mirror = ctx.plan.route_spec.mirror
    if mirror is not None:
        targets += [(m, "mirror", mirror) for m in ctx.plan.mirror_to]
    for model, gate in gateway.recorder.gates.tripped_for(ctx.cohort):
        if unit_hash(f"probe:{model}:{ctx.request_id}") < gate.probe_sample:
            targets.append((model, "probe", mirror or PROBE_DEFAULTS))
    seen = {ctx.answered_by}
    unique = []
    for model, reason, spec in targets:
        if model not in seen and model in policy.models:
            seen.add(model)
            unique.append((model, reason, spec))
    return unique


def start_shadows(gateway: Gateway, ctx: RequestContext, policy: PolicySpec) -> asyncio.Future[FinishedAnswer | None]:
    primary: asyncio.Future[FinishedAnswer | None] = asyncio.get_running_loop().create_future()
    targets = shadow_targets(gateway, ctx, policy)
    if ctx.stream and ctx.endpoint in ("chat", "completions"):
        ctx.assembler = StreamAssembler()  # a Responses stream ends with the whole response: no assembling
    for model, reason, spec in targets:
        job = ShadowJob(
            model=model,
            cohort=ctx.cohort,
            reason=reason,
            endpoint=ctx.endpoint,
            body=ctx.body,
            headers=client_headers(ctx),
            max_inflight=spec.max_inflight,
            timeout_s=spec.timeout_s,
            primary=primary,
            capture=spec.capture,
            primary_span=ctx.server_span,
            origin=ctx,
        )
        gateway.shadows.submit(job)
    return primary


def finish(
    gateway: Gateway, ctx: RequestContext, primary: asyncio.Future[FinishedAnswer | None]
) -> FinishedAnswer | None:
    """The primary answer is complete: remember it for feedback, release the shadows, evaluate it. Returns the
    answer as the evaluators see it (None for embeddings and a broken stream: nothing to judge)."""
    model = ctx.answered_by
    if model is None or ctx.stream_error is not None or ctx.endpoint == "embeddings":
        if not primary.done():
            primary.set_result(None)
        return None
    key = ctx.client_key.name if ctx.client_key is not None else None
    gateway.recorder.feedback.remember(ctx.request_id, model, ctx.cohort, key)
    now = time.perf_counter()
    ttft = ctx.first_byte_at - ctx.started if ctx.first_byte_at is not None else None
    if ctx.assembler is not None:
        answer = ctx.assembler.finish(ctx.body, ttft_s=ttft, total_s=now - ctx.started)
    elif ctx.endpoint == "responses":
        answer = answer_from_response(ctx.body, ctx.answer_json or {}, ttft_s=ttft, total_s=now - ctx.started)
    else:
        answer = answer_from_json(ctx.body, ctx.answer_json or {}, ttft_s=ttft, total_s=now - ctx.started)
    if not primary.done():
        primary.set_result(answer)
    asyncio.get_running_loop().call_soon(gateway.recorder.evaluate, model, ctx.cohort, answer, "online")
    return answer
