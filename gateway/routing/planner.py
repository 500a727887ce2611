"""Planner: cohort → route → ordered attempts (primary, then fallbacks) and the mirror decision.

Randomness is a parameter: a split arm is a pure function of a uniform number ``u`` in [0, 1), drawn from a hash of
the user (``sticky: user``) or from the injected RNG. Models that live state rules out (an unhealthy backend pool,
a tripped eval gate) are skipped through :class:`ModelFilter`, so the planner itself holds no state.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

from gateway.policy.schema import SOURCES, PolicySpec, RouteSpec
from gateway.routing.features import RequestFeatures


class ModelFilter(Protocol):
    """Why ``model`` must not serve ``cohort`` right now (``"unhealthy"``, ``"breaker"``, ``"eval"``), or None."""

    def __call__(self, model: str, cohort: str) -> str | None: ...


def no_filter(model: str, cohort: str) -> str | None:
    return None


class RolloutWeights(Protocol):
    """The percent of ``route``'s traffic its rollout puts on ``candidate`` now (live state, not the policy)."""

    def __call__(self, route: str, candidate: str) -> float: ...


def first_step(policy: PolicySpec) -> RolloutWeights:
    """Without live state (``explain`` on the command line): every rollout at its first step."""

    def weight(route: str, candidate: str) -> float:
        rollout = policy.routes[route].rollout
        return float(rollout.steps[0]) if rollout is not None and rollout.candidate == candidate else 0.0

    return weight


def rollout_key(sticky: str, features: RequestFeatures, request_id: str) -> str:
    """What a rollout assigns by: the same key lands on the same side at every step (a user on the candidate at
    5 % is still on it at 25 %), and on the candidate at every later step (the share only grows)."""
    if sticky == "user" and features.user:
        return "user:" + features.user
    if sticky == "api_key" and features.api_key:
        return "key:" + features.api_key
    if sticky.startswith("header:"):
        value = features.headers.get(sticky.removeprefix("header:").lower())
        if value:
            return "header:" + value
    return "request:" + request_id


def unit_hash(key: str) -> float:
    """A stable uniform number in [0, 1) from ``key``: the same user or request id always lands the same way."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def choose_weighted(arms: Sequence[str], cumulative: Sequence[float], u: float) -> str:
    """The arm whose cumulative-weight interval holds ``u`` times the total. Arms with weight 0 can never be chosen."""
    index = bisect.bisect_right(cumulative, u * cumulative[-1])
    return arms[min(index, len(arms) - 1)]


@dataclass(frozen=True)
class Skipped:
    model: str
    reason: str


@dataclass(frozen=True)
class Plan:
    cohort: str
    route: str
    route_spec: RouteSpec  # the route, looked up once per request
    primary: str  # the model the route chose, before live state skipped any
    attempts: tuple[str, ...]
    skipped: tuple[Skipped, ...] = ()
    split_choice: str | None = None
    split_u: float | None = None
    pinned: bool = False  # the client named a registry model directly
    mirror_to: tuple[str, ...] = ()
    mirror_u: float | None = None
    mirror_sample: float = 0.0
    rollout_candidate: str | None = None  # the route's rollout candidate (None: no rollout, or a pinned model)
    rollout_weight: float = 0.0  # its percent of the traffic now
    rollout_u: float | None = None  # this request's place in [0, 1): on the candidate when below weight / 100

    @property
    def on_candidate(self) -> bool:
        return self.rollout_u is not None and self.rollout_u * 100 < self.rollout_weight

    @property
    def primary_skipped(self) -> Skipped | None:
        """The primary when live state ruled it out before any attempt (a fallback without a failed call)."""
        return self.skipped[0] if self.skipped and self.skipped[0].model == self.primary else None


@dataclass(frozen=True)
class _CompiledRoute:
    name: str
    spec: RouteSpec
    arms: tuple[str, ...]
    cumulative: tuple[float, ...]
    fallback: tuple[str, ...]


class Planner:
    def __init__(self, policy: PolicySpec, rng: Callable[[], float] | None = None) -> None:
        self._policy = policy
        self._rng = rng or random.random
        self._routes = {name: self._compile(name, spec) for name, spec in policy.routes.items()}

    def _compile(self, name: str, spec: RouteSpec) -> _CompiledRoute:
        if spec.target is not None:
            arms: tuple[str, ...] = (spec.target,)
            weights: list[float] = [1.0]
        else:
            assert spec.split is not None
            arms = tuple(spec.split)
            weights = list(spec.split.values())
        fallback: list[str] = []
        for entry in spec.fallback_entries:
            expanded = [s for arm in arms for s in self._policy.models[arm].sources] if entry == SOURCES else [entry]
            fallback.extend(m for m in expanded if m not in fallback and m not in arms)
        return _CompiledRoute(name, spec, arms, tuple(accumulate(weights)), tuple(fallback))

    def plan(
        self,
        cohort: str,
        features: RequestFeatures,
        request_id: str,
        skip: ModelFilter = no_filter,
        rollouts: RolloutWeights | None = None,
        embedding: bool = False,
        split_u: float | None = None,
    ) -> Plan:
        """``embedding``: the request is for ``/v1/embeddings``, which only ``kind: embedding`` models serve (and
        only they); models of the other kind are left out of the attempts, as if the route did not list them.
        ``split_u``: a recorded :attr:`Plan.split_u` (``llm-gateway replay``), used instead of the RNG for a split
        that is not sticky, so a replayed request lands on the arm it took live."""
        route_name, _ = self._policy.route_for(cohort)
        route = self._routes[route_name]
        split_choice: str | None = None
        chosen_u: float | None = None
        pinned = features.model in self._policy.models
        rollout = route.spec.rollout
        rollout_u: float | None = None
        weight = 0.0
        if pinned:
            ordered = [features.model, *(m for m in route.fallback if m != features.model)]
        elif rollout is not None:
            weight = (rollouts or first_step(self._policy))(route_name, rollout.candidate)
            key = rollout_key(rollout.sticky, features, request_id)
            rollout_u = unit_hash(f"rollout:{route_name}:{rollout.candidate}:{key}")
            incumbent = [route.arms[0], *(m for m in route.fallback if m != rollout.candidate)]
            ordered = [rollout.candidate, *incumbent] if rollout_u * 100 < weight else incumbent
        elif len(route.arms) == 1:
            ordered = [route.arms[0], *route.fallback]
        else:
            user = features.user
            if route.spec.sticky == "user" and user:
                chosen_u = unit_hash(f"sticky:{user}")
            else:
                chosen_u = self._rng() if split_u is None else split_u
            split_choice = choose_weighted(route.arms, route.cumulative, chosen_u)
            ordered = [split_choice, *route.fallback]
        models = self._policy.models
        ordered = [m for m in ordered if m in models and (models[m].kind == "embedding") == embedding] or ordered[:0]
        attempts: list[str] = []
        skipped: list[Skipped] = []
        for model in ordered:
            reason = skip(model, cohort)
            if reason is None:
                attempts.append(model)
            else:
                skipped.append(Skipped(model, reason))
        mirror = route.spec.mirror
        mirror_u = unit_hash(f"mirror:{route_name}:{request_id}") if mirror else None
        mirror_to: tuple[str, ...] = ()
        if mirror is not None and mirror_u is not None and mirror_u < mirror.sample:
            mirror_to = tuple(mirror.to)
        return Plan(
            cohort=cohort,
            route=route_name,
            route_spec=route.spec,
            primary=ordered[0] if ordered else "",
            attempts=tuple(attempts),
            skipped=tuple(skipped),
            split_choice=split_choice,
            split_u=chosen_u,
            pinned=pinned,
            mirror_to=mirror_to,
            mirror_u=mirror_u,
            mirror_sample=mirror.sample if mirror else 0.0,
            rollout_candidate=rollout.candidate if rollout is not None and not pinned else None,
            rollout_weight=weight,
            rollout_u=rollout_u,
        )
