"""CohortClassifier: request → cohort, first matching rule wins, else the default cohort.

Each ``match`` mapping is compiled once per policy (:mod:`gateway.routing.matchers`). Classification is total:
every request gets exactly one cohort.

``semantic`` conditions need the request's vector, which takes a call to an embedding model, so a policy with any
is evaluated in three-valued (Kleene) logic: a semantic condition is *unknown* until its vector is known, and
``any``/``all``/``not`` carry unknowns through. Rules are walked in order; a rule that is definitely true after
definitely false ones wins with no vector fetched, and only a rule that is still unknown makes the request wait
(at most the condition's ``timeout_s``; a failure makes the condition false). :meth:`CohortClassifier.classify`
never waits: where a vector is needed it answers as if the embedder were down and sets ``needs_embedding``, and
:meth:`CohortClassifier.classify_async` fetches. Policies without semantic rules take the plain path, unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.policy.schema import Match, PolicySpec, SemanticSpec
from gateway.routing.embedding import Embedder
from gateway.routing.features import RequestFeatures
from gateway.routing.matchers import MATCHERS, Predicate, TriPredicate, compile_match, compile_tri, contains_semantic
from gateway.routing.semantic import SemanticRule, SemanticRules, match_path
from gateway.routing.semantic_eval import Evaluation, FallthroughHook, LeafOutcome, SemanticLeaf, explain_leaves

__all__ = ["MATCHERS", "CohortClassifier", "CohortDecision", "compile_match", "explain_match"]


@dataclass(frozen=True)
class CohortDecision:
    cohort: str
    rule: str  # "cohorts[1]" (the winning cohort's position) or "default"
    score: float | None = None  # the similarity that decided a semantic match (span: gateway.cohort.score)
    needs_embedding: bool = False  # classify() could not wait for a vector: await classify_async() for the answer
    semantic: tuple[LeafOutcome, ...] = ()  # every semantic condition evaluated for this request


def explain_match(match: Match, features: RequestFeatures, decision: CohortDecision | None = None) -> list[str]:
    """The conditions of ``match`` that hold for ``features``, named the way the policy names them. A semantic
    condition holds as ``decision`` (the classifier's, for this request) found it; without one it does not."""
    outcomes = {o.path: o for o in decision.semantic} if decision is not None else {}
    path = f"{decision.rule}.match" if decision is not None else ""
    return _explain(match, features, outcomes, path)


def _explain(match: Match, features: RequestFeatures, outcomes: Mapping[str, LeafOutcome], path: str) -> list[str]:
    held = []
    for key in sorted(match.model_fields_set):
        if not _holds(key, match, features, outcomes, path):
            continue
        name = "not" if key == "not_" else key
        if key == "semantic":
            outcome = outcomes[f"{path}.semantic"]
            name = f"semantic {outcome.score:.3f}>={outcome.threshold:g}"
        elif key == "any" and match.any:
            first = next(i for i, c in enumerate(match.any) if _all_hold(c, features, outcomes, f"{path}.any[{i}]"))
            inner = _explain(match.any[first], features, outcomes, f"{path}.any[{first}]")
            name = f"any[{first}]: " + ", ".join(inner)
        held.append(name)
    return held


def _all_hold(match: Match, features: RequestFeatures, outcomes: Mapping[str, LeafOutcome], path: str) -> bool:
    return all(_holds(key, match, features, outcomes, path) for key in match.model_fields_set)


def _holds(key: str, match: Match, f: RequestFeatures, outcomes: Mapping[str, LeafOutcome], path: str) -> bool:
    if key == "semantic":
        outcome = outcomes.get(f"{path}.semantic")
        return outcome is not None and outcome.held
    if key == "any" and match.any:
        return any(_all_hold(c, f, outcomes, f"{path}.any[{i}]") for i, c in enumerate(match.any))
    if key == "all" and match.all:
        return all(_all_hold(c, f, outcomes, f"{path}.all[{i}]") for i, c in enumerate(match.all))
    if key == "not_" and match.not_ is not None:
        return not _all_hold(match.not_, f, outcomes, f"{path}.not")
    return MATCHERS[key](getattr(match, key))(f)


@dataclass(frozen=True)
class _Rule:
    decision: CohortDecision
    predicate: TriPredicate
    leaves: tuple[SemanticLeaf, ...]
    plain: Predicate | None = None  # the rule has no semantic condition: evaluated as a plain predicate


class CohortClassifier:
    """``semantic``: the policy's prepared examples (:func:`gateway.routing.semantic.prepare`); without them (an
    offline ``check``, or examples that could not be embedded) every semantic condition is false, reported as
    ``examples_unavailable``. ``on_fallthrough(cohort, reason)`` hears of each semantic condition taken as false
    because its vector or examples could not be had."""

    def __init__(
        self,
        policy: PolicySpec,
        semantic: SemanticRules | None = None,
        on_fallthrough: FallthroughHook | None = None,
    ) -> None:
        self._plain = [
            (CohortDecision(cohort.name, f"cohorts[{i}]"), compile_match(cohort.match))
            for i, cohort in enumerate(policy.cohorts)
            if cohort.match is not None
        ]
        self._default = CohortDecision(policy.default_cohort, "default")
        self._default_rule = _Rule(self._default, lambda f, e: True, ())
        self._on_fallthrough = on_fallthrough
        self.leaves: list[SemanticLeaf] = []
        self._rules: list[_Rule] = []
        if any(contains_semantic(c.match) for c in policy.cohorts if c.match is not None):
            self._compile_semantic(policy, semantic)

    @property
    def has_semantic(self) -> bool:
        return bool(self._rules)

    def _compile_semantic(self, policy: PolicySpec, prepared: SemanticRules | None) -> None:
        for i, cohort in enumerate(policy.cohorts):
            if cohort.match is None:
                continue
            first = len(self.leaves)

            def make_leaf(path: str, spec: SemanticSpec, i: int = i, name: str = cohort.name) -> SemanticLeaf:
                index = prepared.index_for(path, spec) if prepared is not None else None
                leaf = SemanticLeaf(len(self.leaves), SemanticRule(name, i, path, spec), index)
                self.leaves.append(leaf)
                return leaf

            predicate = compile_tri(cohort.match, match_path(i), make_leaf)
            decision = CohortDecision(cohort.name, f"cohorts[{i}]")
            leaves = tuple(self.leaves[first:])
            plain = None if leaves else compile_match(cohort.match)
            self._rules.append(_Rule(decision, predicate, leaves, plain))

    def classify(self, features: RequestFeatures) -> CohortDecision:
        """The cohort, without waiting. Where a semantic rule needs the request's vector, the answer is what it
        would be with the embedder down, with ``needs_embedding`` set: await :meth:`classify_async` for the real
        one."""
        if not self._rules:
            for decision, predicate in self._plain:
                if predicate(features):
                    return decision
            return self._default
        evaluation = Evaluation(features)
        position, waiting = 0, False
        while True:
            position, found = self._walk(evaluation, position)
            if found is not None:
                if not waiting:
                    evaluation.report(self._on_fallthrough)
                return _decision(found, evaluation, waiting)
            waiting = True
            evaluation.assume_false(evaluation.wanted)

    async def classify_async(self, features: RequestFeatures, embedder: Embedder) -> CohortDecision:
        """The cohort, fetching the request's vector (through ``embedder``, which should be a
        :class:`gateway.routing.embedding.CachedEmbedder`) only when a rule cannot be decided without it."""
        if not self._rules:
            return self.classify(features)
        evaluation = Evaluation(features)
        try:
            position = 0
            while True:
                position, found = self._walk(evaluation, position)
                if found is not None:
                    evaluation.report(self._on_fallthrough)
                    return _decision(found, evaluation, False)
                await evaluation.settle(list(evaluation.wanted), embedder)
        finally:
            evaluation.close()

    async def explain_semantic(
        self, features: RequestFeatures, embedder: Embedder, k: int = 3, timeout_s: float = 5.0
    ) -> list[dict[str, object]]:
        """Each semantic condition of the policy against ``features``, in policy order: cohort, path, model, text
        mode, threshold, ``held``, ``similarity`` (the nearest example's), ``nearest`` (the ``k`` nearest examples
        with similarities, best first) and ``reason`` (why it could not be evaluated, else None)."""
        return await explain_leaves(self.leaves, features, embedder, k, timeout_s)

    def _walk(self, evaluation: Evaluation, start: int) -> tuple[int, _Rule | None]:
        """From rule ``start`` on: the first definitely true rule (or the default), or None and the position of
        the first rule that cannot be decided without a vector (its leaves in ``evaluation.wanted``). A rule found
        false stays false when more becomes known (Kleene logic is monotone), so a walk resumes where it stopped."""
        features = evaluation.features
        rules = self._rules
        for position in range(start, len(rules)):
            rule = rules[position]
            if rule.plain is not None:
                if rule.plain(features):
                    return position, rule
                continue
            evaluation.wanted.clear()
            value = rule.predicate(features, evaluation)
            while value is None and not evaluation.settle_offline(evaluation.wanted):
                evaluation.wanted.clear()  # every leaf it waited for is settled now: evaluate again
                value = rule.predicate(features, evaluation)
            if value is None:
                return position, None
            if value:
                return position, rule
        return len(rules), self._default_rule


def _decision(rule: _Rule, evaluation: Evaluation, waiting: bool) -> CohortDecision:
    if not evaluation.outcomes and not waiting:
        return rule.decision
    score = evaluation.score_of(rule.leaves)
    outcomes = tuple(evaluation.outcomes.values())
    return CohortDecision(rule.decision.cohort, rule.decision.rule, score, waiting, outcomes)
