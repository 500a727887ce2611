"""``policy.proposed.yaml``: the input policy with the routing the candidate has earned, and nothing else changed.

Edits are made on the input's own YAML data (key order and untouched sections kept as written; comments are lost):

* an earned cohort is routed to the candidate: its previous target (or split arms, heaviest first) moves to the
  head of the fallback chain, followed by the old chain (``sources`` written out, so it keeps its old meaning), the
  candidate removed from it and from the route's mirror; a cohort that used the default cohort's route gets a route
  of its own;
* or, with ``--as-rollout``, an earned cohort keeps its incumbent as the ``target`` (a split's heaviest other arm,
  the rest of the chain after it) and gets a ``rollout`` of the candidate, which the gateway steps up while the
  candidate keeps passing its analysis (and moves back when it fails);
* a cohort the candidate was asked to take but did not earn gets a mirror to the candidate (``shadow_sample``), so
  it keeps collecting evidence without serving anyone; a route that already sends it to the candidate is left as
  is (and the report says so);
* an eval gate watches the candidate on the cohorts it newly serves, with the online counterparts of the
  evaluators that decided them.

The result is validated by :func:`gateway.policy.parse_policy` (the same checks as ``llm-gateway check``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from gateway.policy import parse_policy
from gateway.policy.schema import SOURCES, PolicySpec, PromotionSpec, RouteSpec
from gateway.promote.decide import CohortDecision

ONLINE_COUNTERPART = {
    "json_valid": "json_valid",
    "json_schema": "json_schema",
    "tool_call_valid": "tool_call_valid",
    "tool_selection": "tool_call_valid",
    "not_truncated": "not_truncated",
    "no_refusal": "no_refusal",
}
"""Offline evaluator → the online evaluator that watches the same property in production."""
_ROUTE_SETTINGS = ("balance", "prefix_chars", "session_header", "max_tokens")


@dataclass(frozen=True)
class Proposal:
    text: str
    changes: list[str]


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def chain(spec: PolicySpec, route: RouteSpec) -> list[str]:
    """The route's models in attempt order: target (or split arms, heaviest first), then fallbacks expanded."""
    primaries = (
        [route.target]
        if route.target is not None
        else [m for m, _ in sorted((route.split or {}).items(), key=lambda a: -a[1])]
    )
    models = list(primaries)
    for entry in route.fallback_entries:
        expanded = [s for arm in primaries for s in spec.models[arm].sources] if entry == SOURCES else [entry]
        models.extend(m for m in expanded if m not in models)
    return models


def propose(
    raw: dict[str, Any],
    spec: PolicySpec,
    candidate: str,
    decisions: Sequence[CohortDecision],
    settings: PromotionSpec,
    filename: str = "policy.proposed.yaml",
    *,
    rollout: Mapping[str, Any] | None = None,
) -> Proposal:
    """``rollout``: the ``rollout`` block (without ``candidate``) that earned cohorts get instead of a switch."""
    data = copy.deepcopy(raw)
    routes: dict[str, Any] = data["routes"]
    changes: list[str] = []
    newly_served: list[CohortDecision] = []
    for decision in decisions:
        if not decision.asked:
            continue
        key, route = spec.route_for(decision.cohort)
        primaries = [route.target] if route.target is not None else list(route.split or {})
        rolling_out = route.rollout is not None and route.rollout.candidate == candidate
        own = key == decision.cohort
        if decision.earned and candidate in primaries and len(primaries) == 1:
            changes.append(f"{decision.cohort}: already routed to {candidate}")
        elif decision.earned and rollout is not None and rolling_out:
            changes.append(f"{decision.cohort}: {candidate} is already rolling out on its route; left as is")
        elif decision.earned and rollout is not None:
            routes[decision.cohort] = _rolled_out(routes[key], spec, route, candidate, rollout, own=own)
            changes.append(_rollout_change(decision.cohort, routes[decision.cohort], route if own else None))
            newly_served.append(decision)
        elif decision.earned:
            routes[decision.cohort] = _promoted(routes[key], spec, route, candidate, own=own)
            fallback = routes[decision.cohort]["fallback"]
            change = f"{decision.cohort}: routed to {candidate}, fallback {fallback}"
            if own and route.rollout is not None:
                change += f"; its rollout of {route.rollout.candidate} is removed"
            changes.append(change)
            newly_served.append(decision)
        elif candidate in primaries or rolling_out:
            how = "sends it to" if candidate in primaries else "rolls out"
            changes.append(f"{decision.cohort}: held, but its route already {how} {candidate}; left as is")
        else:
            shadowed = copy.deepcopy(routes[key])
            routes[decision.cohort] = _with_mirror(shadowed, candidate, settings.shadow_sample)
            changes.append(f"{decision.cohort}: held; mirrored to {candidate} (sample {settings.shadow_sample:g})")
    gate = _gate(spec, candidate, newly_served, settings)
    if gate is not None:
        evals = data.setdefault("evals", {})
        evals.setdefault("gates", []).append(gate)
        changes.append(f"eval gate for {candidate} on {', '.join(gate['cohorts'])}: {', '.join(gate['evaluators'])}")
    body = yaml.dump(data, Dumper=_NoAliases, sort_keys=False, default_flow_style=None, width=120, allow_unicode=True)
    header = (
        f"# Proposed by `llm-gateway eval` for candidate {candidate} (comments of the input policy are not kept).\n"
        + "".join(f"#   {change}\n" for change in changes)
    )
    text = header + body
    parse_policy(text, filename)  # raises PolicyError: a proposal that `llm-gateway check` rejects is a bug
    return Proposal(text, changes)


def _promoted(
    raw_route: dict[str, Any], spec: PolicySpec, route: RouteSpec, candidate: str, *, own: bool
) -> dict[str, Any]:
    fallback = [m for m in chain(spec, route) if m != candidate]
    if not own:
        settings = {k: copy.deepcopy(v) for k, v in raw_route.items() if k in _ROUTE_SETTINGS}
        return {"target": candidate, "fallback": fallback, **settings}
    promoted: dict[str, Any] = {}
    for key, value in raw_route.items():
        if key in ("split", "target"):
            promoted["target"] = candidate
        elif key == "fallback":
            promoted["fallback"] = fallback
        elif key not in ("sticky", "rollout"):
            promoted[key] = copy.deepcopy(value)
    promoted["fallback"] = fallback
    mirror = promoted.get("mirror")
    if isinstance(mirror, dict):
        mirror["to"] = [m for m in mirror.get("to", []) if m != candidate]
        if not mirror["to"]:
            del promoted["mirror"]
    return promoted


def _rolled_out(
    raw_route: dict[str, Any],
    spec: PolicySpec,
    route: RouteSpec,
    candidate: str,
    rollout: Mapping[str, Any],
    *,
    own: bool,
) -> dict[str, Any]:
    """The route with its incumbent kept as the target and a rollout of the candidate: a route with a target keeps
    its fallback as written (less the candidate); a split, or the default route copied for a cohort, gets the
    chain's first model other than the candidate as the target and the rest of the chain as its fallback."""
    block = {"candidate": candidate, **rollout}
    if own and route.target is not None:
        kept = copy.deepcopy(raw_route)
        if isinstance(kept.get("fallback"), list):
            kept["fallback"] = [m for m in kept["fallback"] if m != candidate]
        kept["rollout"] = block
        return kept
    incumbent, *fallback = [m for m in chain(spec, route) if m != candidate]
    if not own:
        settings = {k: copy.deepcopy(v) for k, v in raw_route.items() if k in _ROUTE_SETTINGS}
        return {"target": incumbent, "fallback": fallback, **settings, "rollout": block}
    rolled: dict[str, Any] = {}
    for key, value in raw_route.items():
        if key == "split":
            rolled["target"] = incumbent
        elif key == "fallback":
            rolled["fallback"] = fallback
        elif key not in ("sticky", "rollout"):
            rolled[key] = copy.deepcopy(value)
    rolled["fallback"] = fallback
    rolled["rollout"] = block
    return rolled


def _rollout_change(cohort: str, proposed: dict[str, Any], before: RouteSpec | None) -> str:
    """``before``: the cohort's own route as it was (None: it used the default cohort's)."""
    block = proposed["rollout"]
    steps = ", ".join(f"{s}%" for s in block["steps"])
    text = f"{cohort}: rollout of {block['candidate']} over {proposed['target']}"
    text += f" (steps {steps}, step_s {block['step_s']:g})"
    if before is not None and before.split is not None:
        text += f"; the split {dict(before.split)} becomes target {proposed['target']}, fallback {proposed['fallback']}"
    if before is not None and before.rollout is not None:
        text += f"; replaces the rollout of {before.rollout.candidate}"
    return text


def _with_mirror(raw_route: dict[str, Any], candidate: str, sample: float) -> dict[str, Any]:
    mirror = raw_route.get("mirror")
    if isinstance(mirror, dict):
        if candidate not in mirror.get("to", []):
            mirror["to"] = [*mirror.get("to", []), candidate]
    else:
        raw_route["mirror"] = {"to": [candidate], "sample": sample}
    return raw_route


def _gate(
    spec: PolicySpec, candidate: str, decisions: Sequence[CohortDecision], settings: PromotionSpec
) -> dict[str, Any] | None:
    cohorts = [d.cohort for d in decisions if spec.evals.gate_for(candidate, d.cohort) is None]
    if not cohorts:
        return None
    evaluators = ["non_empty"]
    for decision in decisions:
        for comparison in decision.comparisons:
            online = ONLINE_COUNTERPART.get(comparison.evaluator)
            if comparison.required and online is not None and online not in evaluators:
                evaluators.append(online)
    return {
        "models": [candidate],
        "cohorts": cohorts,
        "evaluators": evaluators,
        "max_fail_rate": settings.gate_max_fail_rate,
    }
