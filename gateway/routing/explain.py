"""Explain a routing decision: which cohort (and rule), which route, the attempt order, the rollout and the mirror
decision, and for ``semantic`` rules the nearest examples with their similarities against the threshold.

Shared by ``llm-gateway explain`` (offline, from a file: every rollout at its first step; semantic examples
embedded by :mod:`gateway.routing.explain_offline`) and ``POST /admin/explain`` (live: gate and breaker states
through the planner's ``skip`` filter, each rollout's current weight and state, the gateway's embedder and the
examples of the policy in force).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.policy.schema import PolicySpec, RouteSpec
from gateway.rollouts.analysis import RolloutState
from gateway.routing.cohorts import CohortClassifier, CohortDecision, explain_match
from gateway.routing.embedding import Embedder
from gateway.routing.features import RequestFeatures
from gateway.routing.planner import ModelFilter, Plan, Planner, RolloutWeights, no_filter, rollout_key

KEY_KINDS = {"user": "user", "key": "api_key", "header": "header", "request": "request id"}
"""The prefix of :func:`rollout_key` → what this request's rollout assignment hashed (never the value itself)."""


EXPLAIN_EMBED_TIMEOUT_S = 5.0
"""How long explain waits for the request's vector: an operator waits longer than a request does."""


def explain(
    policy: PolicySpec,
    classifier: CohortClassifier,
    planner: Planner,
    body: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    request_id: str = "explain",
    skip: ModelFilter = no_filter,
    rollouts: RolloutWeights | None = None,
    rollout_states: Mapping[tuple[str, str], RolloutState] | None = None,
    decision: CohortDecision | None = None,
    semantic: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``rollouts`` and ``rollout_states`` are the live weights and states (``None``: every rollout at its first
    step, as ``llm-gateway explain`` shows it without a running gateway). Without ``decision`` the classifier
    answers without an embedder (semantic rules false); :func:`explain_async` asks one."""
    features = request_features(body, headers)
    if decision is None:
        decision = classifier.classify(features)
    cohort = next(c for c in policy.cohorts if c.name == decision.cohort)
    if cohort.match is not None:
        rule = f"{decision.rule} {cohort.name}: " + ", ".join(explain_match(cohort.match, features, decision))
    else:
        rule = f"default cohort {cohort.name} (no earlier cohort matched)"
    plan = planner.plan(decision.cohort, features, request_id, skip, rollouts)
    route_name, route = policy.route_for(decision.cohort)
    attempts = [{"model": model, "why": _why(plan, model, features.model)} for model in plan.attempts]
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
        "rollout": _rollout(route, plan, features, request_id, rollout_states),
        "mirror": mirror,
        "semantic": semantic or [],
    }


async def explain_async(
    policy: PolicySpec,
    classifier: CohortClassifier,
    planner: Planner,
    body: dict[str, Any],
    *,
    embedder: Embedder,
    headers: dict[str, str] | None = None,
    request_id: str = "explain",
    skip: ModelFilter = no_filter,
    rollouts: RolloutWeights | None = None,
    rollout_states: Mapping[tuple[str, str], RolloutState] | None = None,
) -> dict[str, Any]:
    """:func:`explain` with the semantic rules evaluated through ``embedder`` (give it a
    :class:`gateway.routing.embedding.CachedEmbedder`: the vector the report fetches then decides the cohort too,
    so the two agree). ``semantic`` lists every semantic condition: its nearest examples, similarity, threshold."""
    semantic: list[dict[str, Any]] | None = None
    decision = None
    if classifier.has_semantic:
        features = request_features(body, headers)
        semantic = await classifier.explain_semantic(features, embedder, timeout_s=EXPLAIN_EMBED_TIMEOUT_S)
        decision = classifier.classify(features)
        if decision.needs_embedding:
            decision = await classifier.classify_async(features, embedder)
    return explain(
        policy,
        classifier,
        planner,
        body,
        headers=headers,
        request_id=request_id,
        skip=skip,
        rollouts=rollouts,
        rollout_states=rollout_states,
        decision=decision,
        semantic=semantic,
    )


def request_features(body: dict[str, Any], headers: dict[str, str] | None) -> RequestFeatures:
    return RequestFeatures(body, {k.lower(): v for k, v in (headers or {}).items()})


def _why(plan: Plan, model: str, requested: str) -> str:
    if plan.pinned and model == requested:
        return "requested by name"
    if plan.rollout_candidate is not None and plan.rollout_u is not None:
        bound = f"u={plan.rollout_u:.4f} {'<' if plan.on_candidate else '>='} {plan.rollout_weight:g}%"
        if model == plan.rollout_candidate:
            return f"rollout candidate ({bound})"
        if model == plan.route_spec.target:
            return "rollout incumbent" + ("" if plan.on_candidate else f" ({bound})")
    if model == plan.primary:
        return f"split arm (u={plan.split_u:.4f})" if plan.split_choice else "route target"
    return "fallback"


def _rollout(
    route: RouteSpec,
    plan: Plan,
    features: RequestFeatures,
    request_id: str,
    states: Mapping[tuple[str, str], RolloutState] | None,
) -> dict[str, Any] | None:
    """The route's rollout as it applies to this request: where it stands, and which side this request lands on."""
    spec = route.rollout
    if spec is None:
        return None
    found: dict[str, Any] = {"candidate": spec.candidate, "incumbent": route.target, "steps": spec.steps}
    state = states.get((plan.route, spec.candidate)) if states is not None else None
    if states is None:
        found.update(live=False, state="first step", step=0, weight=float(spec.steps[0]))
    elif state is None:  # the gateway has not applied this rollout (yet): the planner put no traffic on it
        found.update(live=True, state="not started", step=0, weight=0.0)
    else:
        found.update(live=True, state=state.state, step=state.step, weight=state.weight(spec))
    if plan.pinned:
        found.update(applies=False, u=None, lands_on_candidate=False, sticky=spec.sticky, key=None)
        return found
    key = rollout_key(spec.sticky, features, request_id).split(":", 1)[0]
    found.update(
        applies=True,
        weight=plan.rollout_weight,  # what this request was planned with
        u=round(plan.rollout_u, 6) if plan.rollout_u is not None else None,
        lands_on_candidate=plan.on_candidate,
        sticky=spec.sticky,
        key=KEY_KINDS.get(key, key),
    )
    return found


def render_text(result: dict[str, Any]) -> str:
    lines = [
        f"model:    {result['model']}" + ("" if result["model_known"] else "  (unknown: the gateway answers 404)"),
        f"cohort:   {result['cohort']}",
        f"rule:     {result['rule']}",
        f"route:    {result['route']}" + ("  (the default cohort's route)" if result["route_is_default"] else ""),
    ]
    if result["split"]:
        lines.append(f"split:    {result['split']}" + (f" sticky={result['sticky']}" if result["sticky"] else ""))
    if result.get("rollout"):
        lines.append(_render_rollout(result["rollout"]))
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
    lines.extend(_render_semantic(result.get("semantic") or []))
    return "\n".join(lines)


EXAMPLE_CHARS = 72
"""Examples are cut to this many characters in the text output (the JSON has them whole)."""


def _render_semantic(reports: list[dict[str, Any]]) -> list[str]:
    """Each semantic condition: where it is, its verdict against the threshold, and its nearest examples."""
    if not reports:
        return []
    lines = ["semantic: (nearest examples by cosine similarity; a condition holds at >= its threshold)"]
    for report in reports:
        head = f"  {report['path']}  {report['cohort']}  model={report['model']} text={report['text']}"
        threshold = report["threshold"]
        if report["reason"] is not None:
            lines.append(f"{head}: not evaluated ({report['reason']}): false")
        elif report["similarity"] is None:
            lines.append(f"{head}: no text to compare: false")
        else:
            verdict = "holds" if report["held"] else "does not hold"
            sign = ">=" if report["held"] else "<"
            lines.append(f"{head}: {report['similarity']:.3f} {sign} {threshold:g}, {verdict}")
        for near in report["nearest"]:
            example = near["example"]
            shown = example if len(example) <= EXAMPLE_CHARS else example[: EXAMPLE_CHARS - 1] + "…"
            lines.append(f"      {near['similarity']:.3f}  {shown}")
    return lines


def _render_rollout(rollout: dict[str, Any]) -> str:
    where = f"step {rollout['step'] + 1}/{len(rollout['steps'])}"
    state = f"{rollout['state']}, {where}" if rollout["live"] else f"first {where}; offline, no live state"
    line = f"rollout:  {rollout['incumbent']} → {rollout['candidate']} at {rollout['weight']:g}% ({state})"
    if not rollout["applies"]:
        return line + "\n          this request names a registry model: the rollout does not apply"
    side = "the candidate" if rollout["lands_on_candidate"] else "the incumbent"
    return (
        line
        + f"\n          this request: u={rollout['u']} → {side} (sticky={rollout['sticky']}, key: {rollout['key']})"
    )
