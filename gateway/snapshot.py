"""PolicySnapshot: a loaded policy compiled into its runtime form (classifier and planner).

Immutable: a reload builds a new snapshot on the side and swaps one reference; a request reads the reference once
and keeps that snapshot to its end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth import KeyRing
from gateway.policy.loader import LoadedPolicy
from gateway.routing.cohorts import CohortClassifier
from gateway.routing.planner import Planner


@dataclass(frozen=True)
class PolicySnapshot:
    policy: LoadedPolicy
    classifier: CohortClassifier
    planner: Planner
    keys: KeyRing
    forward_headers: tuple[str, ...]

    @classmethod
    def build(cls, policy: LoadedPolicy, rng: Callable[[], float] | None = None) -> PolicySnapshot:
        spec = policy.spec
        forward = tuple(h.lower() for h in spec.limits.forward_headers)
        return cls(policy, CohortClassifier(spec), Planner(spec, rng), KeyRing(spec.keys), forward)

    @property
    def version(self) -> str:
        return self.policy.version

    def knows_model(self, name: str) -> bool:
        spec = self.policy.spec
        return name in spec.models or name in spec.public_models
