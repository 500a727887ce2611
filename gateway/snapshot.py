"""PolicySnapshot: a loaded policy compiled into its runtime form (classifier and planner).

Immutable: a reload builds a new snapshot on the side and swaps one reference; a request reads the reference once
and keeps that snapshot to its end. ``semantic`` holds the vectors of the policy's ``semantic`` examples, computed
when the policy was loaded (:func:`gateway.routing.semantic.prepare`); None while they could not be had, and the
classifier then takes every semantic condition as false.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.auth import KeyRing
from gateway.policy.loader import LoadedPolicy
from gateway.routing.cohorts import CohortClassifier
from gateway.routing.planner import Planner
from gateway.routing.semantic import SemanticRules
from gateway.routing.semantic_eval import FallthroughHook


@dataclass(frozen=True)
class PolicySnapshot:
    policy: LoadedPolicy
    classifier: CohortClassifier
    planner: Planner
    keys: KeyRing
    forward_headers: tuple[str, ...]
    semantic: SemanticRules | None = None

    @classmethod
    def build(
        cls,
        policy: LoadedPolicy,
        rng: Callable[[], float] | None = None,
        semantic: SemanticRules | None = None,
        on_fallthrough: FallthroughHook | None = None,
    ) -> PolicySnapshot:
        spec = policy.spec
        forward = tuple(h.lower() for h in spec.limits.forward_headers)
        classifier = CohortClassifier(spec, semantic, on_fallthrough)
        return cls(policy, classifier, Planner(spec, rng), KeyRing(spec.keys), forward, semantic)

    def with_semantic(self, semantic: SemanticRules, on_fallthrough: FallthroughHook | None = None) -> PolicySnapshot:
        """The same policy (version, planner, keys) with its semantic examples ready: what the background retry
        swaps in once an embedder that was down at startup answers."""
        classifier = CohortClassifier(self.policy.spec, semantic, on_fallthrough)
        return replace(self, classifier=classifier, semantic=semantic)

    @property
    def semantic_pending(self) -> bool:
        """The policy has semantic rules whose examples are not embedded (yet)."""
        return self.classifier.has_semantic and self.semantic is None

    @property
    def version(self) -> str:
        return self.policy.version

    def knows_model(self, name: str) -> bool:
        spec = self.policy.spec
        return name in spec.models or name in spec.public_models
