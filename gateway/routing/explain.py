"""Explain a routing decision: which cohort (and rule), which route, the attempt order and the mirror decision.

Shared by ``llm-gateway explain`` (offline, from a file) and, later, the live admin endpoint that adds gate and
breaker states through the planner's ``skip`` filter.
"""

from __future__ import annotations

from typing import Any

from gateway.policy.schema import PolicySpec
from gateway.routing.cohorts import CohortClassifier, explain_match
from gateway.routing.features import RequestFeatures
from gateway.routing.planner import ModelFilter, Planner, no_filter


def explain(
    policy: PolicySpec,
    classifier: CohortClassifier,
    planner: Planner,
    body: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    request_id: str = "explain",
    skip: ModelFilter = no_filter,
) -> dict[str, Any]:
    features = RequestFeatures(body, {k.lower(): v for k, v in (headers or {}).items()})
    decision = classifier.classify(features)
    cohort = next(c for c in policy.cohorts if c.name == decision.cohort)
    if cohort.match is not None:
        rule = f"{decision.rule} {cohort.name}: " + ", ".join(explain_match(cohort.match, features))
    else:
        rule = f"default cohort {cohort.name} (no earlier cohort matched)"
    plan = planner.plan(decision.cohort, features, request_id, skip)
    route_name, route = policy.route_for(decision.cohort)
    attempts: list[dict[str, Any]] = []
    for model in plan.attempts:
        if plan.pinned and model == features.model:
            why = "requested by name"
        elif model == plan.primary:
            why = f"split arm (u={plan.split_u:.4f})" if plan.split_choice else "route target"
        else:
            why = "fallback"
        attempts.append({"model": model, "why": why})
    skipped = [{"model": s.model, "why": s.reason} for s in plan.skipped]
    mirror: dict[str, Any] = {"configured": route.mirror is not None, "sampled": bool(plan.mirror_to)}
    if route.mirror is not None and plan.mirror_u is not None:
        mirror.update(sample=route.mirror.sample, u=round(plan.mirror_u, 6), to=list(plan.mirror_to))
    known = features.model in policy.models or features.model in policy.public_models
    return {
        "model": features.model,
        "model_known": known,
        "cohort": decision.cohort,
        "rule": rule,
        "route": route_name,
        "route_is_default": route_name != decision.cohort,
        "attempts": attempts,
        "skipped": skipped,
        "split": dict(route.split) if route.split else None,
        "sticky": route.sticky,
        "mirror": mirror,
    }


def render_text(result: dict[str, Any]) -> str:
    lines = [
        f"model:    {result['model']}" + ("" if result["model_known"] else "  (unknown: the gateway answers 404)"),
        f"cohort:   {result['cohort']}",
        f"rule:     {result['rule']}",
        f"route:    {result['route']}" + ("  (the default cohort's route)" if result["route_is_default"] else ""),
    ]
    if result["split"]:
        lines.append(f"split:    {result['split']}" + (f" sticky={result['sticky']}" if result["sticky"] else ""))
    lines.append("attempts:")
    for i, attempt in enumerate(result["attempts"], 1):
        lines.append(f"  {i}. {attempt['model']}  ({attempt['why']})")
    for skipped in result["skipped"]:
        lines.append(f"  -  {skipped['model']}  skipped: {skipped['why']}")
    mirror = result["mirror"]
    if not mirror["configured"]:
        lines.append("mirror:   none configured for this route")
    else:
        verdict = f"yes → {', '.join(mirror['to'])}" if mirror["sampled"] else "no"
        lines.append(f"mirror:   {verdict}  (sample={mirror['sample']}, u={mirror['u']})")
    return "\n".join(lines)
