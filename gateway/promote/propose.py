"""``policy.proposed.yaml``: the input policy with the routing the candidate has earned, and nothing else changed.

Edits are made on the input's own YAML data (key order and untouched sections kept as written; comments are lost):

* an earned cohort is routed to the candidate: its previous target (or split arms, heaviest first) moves to the
  head of the fallback chain, followed by the old chain (``sources`` written out, so it keeps its old meaning), the
  candidate removed from it and from the route's mirror; a cohort that used the default cohort's route gets a route
  of its own;
* a cohort the candidate was asked to take but did not earn gets a mirror to the candidate (``shadow_sample``), so
  it keeps collecting evidence without serving anyone; a route that already sends it to the candidate is left as
  is (and the report says so);
* an eval gate watches the candidate on the cohorts it newly serves, with the online counterparts of the
  evaluators that decided them.

The result is validated by :func:`gateway.policy.parse_policy` (the same checks as ``llm-gateway check``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
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
) -> Proposal:
    data = copy.deepcopy(raw)
    routes: dict[str, Any] = data["routes"]
    changes: list[str] = []
    newly_served: list[CohortDecision] = []
    for decision in decisions:
        if not decision.asked:
            continue
        key, route = spec.route_for(decision.cohort)
        primaries = [route.target] if route.target is not None else list(route.split or {})
        if decision.earned and candidate in primaries and len(primaries) == 1:
            changes.append(f"{decision.cohort}: already routed to {candidate}")
        elif decision.earned:
            routes[decision.cohort] = _promoted(routes[key], spec, route, candidate, own=key == decision.cohort)
            fallback = routes[decision.cohort]["fallback"]
            changes.append(f"{decision.cohort}: routed to {candidate}, fallback {fallback}")
            newly_served.append(decision)
        elif candidate in primaries:
            changes.append(f"{decision.cohort}: held, but its route already sends it to {candidate}; left as is")
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
        elif key != "sticky":
            promoted[key] = copy.deepcopy(value)
    promoted["fallback"] = fallback
    mirror = promoted.get("mirror")
    if isinstance(mirror, dict):
        mirror["to"] = [m for m in mirror.get("to", []) if m != candidate]
        if not mirror["to"]:
            del promoted["mirror"]
    return promoted


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
