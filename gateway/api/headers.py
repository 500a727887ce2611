"""The ``x-gateway-*`` response headers that tell a client (and an SRE with curl) what the gateway did."""

from __future__ import annotations

from gateway.context import RequestContext
from gateway.record import overhead_s


def gateway_headers(ctx: RequestContext) -> dict[str, str]:
    headers = {"x-request-id": ctx.request_id}
    if ctx.policy_version:
        headers["x-gateway-policy-version"] = ctx.policy_version
    if ctx.decision is not None:
        headers["x-gateway-cohort"] = ctx.decision.cohort
    if ctx.plan is not None:
        headers["x-gateway-route"] = ctx.plan.route
    if ctx.answered_by is not None:
        headers["x-gateway-model"] = ctx.answered_by
    if ctx.fallback is not None:
        headers["x-gateway-fallback"] = ctx.fallback
    headers["x-gateway-overhead-ms"] = f"{overhead_s(ctx) * 1000:.3f}"
    return headers
