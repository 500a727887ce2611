"""One policy's decision for a captured request: the gateway's request path up to the first backend call.

:meth:`PolicyReplayer.replay` takes the steps of ``gateway.pipeline.handle`` in its order, with the same parts:
the key (401, then its model allow-list: 403), the model (404), :class:`CohortClassifier`, :class:`Planner` (a route
with no model of the endpoint's kind: 400), the key's cohort allow-list (403), the route's ``max_tokens`` (400).
Live state is left out: no model is skipped (the first model is :attr:`Plan.primary`, which the record names too),
no rate limit is spent, and a split or rollout draws the number it drew live (``outcome.split_u``, the recorded
rollout weight), so that the same request lands the same way under the same policy.
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.auth import ClientKey, allow_cohort, allow_model
from gateway.endpoints import ENDPOINTS
from gateway.errors import AuthenticationFailed, GatewayError, InvalidRequest, ModelNotFound
from gateway.policy.loader import LoadedPolicy
from gateway.replay.features import PolicyReads
from gateway.replay.reader import Captured
from gateway.routing.cohorts import CohortClassifier
from gateway.routing.features import RequestFeatures
from gateway.routing.planner import Planner, RolloutWeights, unit_hash


class Side(NamedTuple):
    """Where a request lands under one policy (or landed live): its cohort and first model, or the 4xx it gets
    (``model`` is then None: no model serves it). ``cohort`` is None when it fails before classification."""

    cohort: str | None
    model: str | None
    status: int | None = None
    code: str | None = None

    def same_as(self, other: Side) -> bool:
        """The same routing: error codes are left out, as a live record may name a 400 by its type or not at all."""
        return self.cohort == other.cohort and self.model == other.model and self.status == other.status


REPLAYED_STATUSES = frozenset({400, 401, 403, 404})
"""The statuses a replay can give (a route, key or model the policy refuses); the others need live state."""


def error_side(cohort: str | None, error: type[GatewayError]) -> Side:
    return Side(cohort, None, error.status, error.code or error.type)


def live_side(record: Captured) -> Side | None:
    """What the record says happened, or None when the request failed live before the policy had a say (a rate
    limit, say): nothing to compare a replay with."""
    status = record.status if record.status in REPLAYED_STATUSES else None
    if record.cohort is None and status not in {401, 403, 404}:
        return None
    if status is not None:
        return Side(record.cohort, None, status, record.error)
    return Side(record.cohort, record.primary)


class _RecordedRollouts:
    """The weight the record's rollout had live, for that route and candidate; any other rollout at its first
    step (a rollout the new policy adds, or one whose candidate it changed)."""

    __slots__ = ("_candidate", "_first", "_route", "_weight")

    def __init__(self, record: Captured, first: dict[tuple[str, str], float]) -> None:
        self._route = record.route
        self._candidate = record.rollout_candidate
        self._weight = record.rollout_weight
        self._first = first

    def __call__(self, route: str, candidate: str) -> float:
        if self._weight is not None and route == self._route and candidate == self._candidate:
            return self._weight
        return self._first.get((route, candidate), 0.0)


class PolicyReplayer:
    """A policy compiled once for replaying many records: classifier, planner, keys, known model names."""

    def __init__(self, loaded: LoadedPolicy) -> None:
        spec = loaded.spec
        self.loaded = loaded
        self.version = loaded.version
        self.reads = PolicyReads.of(spec)
        self._classifier = CohortClassifier(spec)
        self._planner = Planner(spec)
        self._known = frozenset(spec.models) | frozenset(spec.public_models)
        self._keys = {name: ClientKey(name, key) for name, key in spec.keys.items()} if spec.keys is not None else None
        self.needed_embedding = 0  # classifications that reached a semantic rule: decided without its embedder
        self._positions = {f"cohorts[{i}]": i for i in range(len(spec.cohorts))}
        self._positions["default"] = len(spec.cohorts)
        routes = {cohort.name: spec.route_for(cohort.name)[1] for cohort in spec.cohorts}
        self._fixed = frozenset(name for name, route in routes.items() if route.target and not route.rollout)
        self._split = frozenset(name for name, route in routes.items() if route.split and not route.rollout)
        self._models = frozenset(spec.models)
        self._plans: dict[tuple[str, str, bool], tuple[str, int | None]] = {}
        self._first_steps = {
            (name, route.rollout.candidate): float(route.rollout.steps[0])
            for name, route in spec.routes.items()
            if route.rollout is not None
        }

    @property
    def needs_keys(self) -> bool:
        return self._keys is not None

    def replay(self, record: Captured, features: RequestFeatures) -> tuple[Side, bool]:
        """The request's :class:`Side` under this policy, and whether it is inexact: its classification reached a
        rule that reads text the record lacks, or a semantic rule (no embedder here), so with them it may have gone
        otherwise."""
        key: ClientKey | None = None
        if self._keys is not None:
            key = self._keys.get(record.api_key) if record.api_key is not None else None
            if key is None:
                return error_side(None, AuthenticationFailed), False
        features.api_key = key.name if key is not None else None  # live, the api_key matcher sees None without keys
        try:
            allow_model(key, record.model)
        except GatewayError as exc:
            return error_side(None, type(exc)), False
        if record.model not in self._known:
            return error_side(None, ModelNotFound), False
        decision = self._classifier.classify(features)  # never waits: as if the embedder were down
        semantic = bool(decision.semantic) or decision.needs_embedding
        self.needed_embedding += semantic
        cohort = decision.cohort
        inexact = semantic or (
            record.content != "full" and self._positions[decision.rule] >= self.reads.first_text_rule
        )
        primary, limit = self._plan(cohort, features, record)
        if not primary:
            return error_side(cohort, InvalidRequest), inexact
        try:
            allow_cohort(key, cohort)
        except GatewayError as exc:
            return error_side(cohort, type(exc)), inexact
        if limit is not None and record.max_tokens is not None and record.max_tokens > limit:
            return error_side(cohort, InvalidRequest), inexact
        return Side(cohort, primary), inexact

    def _plan(self, cohort: str, features: RequestFeatures, record: Captured) -> tuple[str, int | None]:
        """The plan's first model and the route's ``max_tokens``. A model the client named, or a route with one
        target and no rollout, plans the same for every request: that plan is made once and remembered."""
        embedding = ENDPOINTS[record.endpoint].embedding
        model = features.model
        pinned = model in self._models
        fixed = pinned or cohort in self._fixed
        key = (cohort, model if pinned else "", embedding)
        if fixed and key in self._plans:
            return self._plans[key]
        rollouts: RolloutWeights | None = _RecordedRollouts(record, self._first_steps) if self._first_steps else None
        split_u: float | None = None
        if cohort in self._split:
            split_u = record.split_u if record.split_u is not None else unit_hash("replay-split:" + record.request_id)
        plan = self._planner.plan(
            cohort, features, record.request_id, rollouts=rollouts, embedding=embedding, split_u=split_u
        )
        decided = (plan.primary, plan.route_spec.max_tokens)
        if fixed:
            self._plans[key] = decided
        return decided
