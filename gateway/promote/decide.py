"""Per cohort: has the candidate earned it? Pass rates, non-inferiority on every required evaluator, latency, tokens.

A cohort is *earned* when all of these hold, and *held* (with every reason listed) otherwise:

* it has at least ``min_cases`` cases, and no baseline lost requests to transport errors (a baseline that could not
  be reached is no evidence, and its zeros would flatter the candidate; a 4xx is an answer and counts as a failure);
* on every required evaluator, the candidate is shown not worse than the best baseline by more than ``tolerance``
  (:mod:`gateway.promote.noninferiority`): case by case where both answered the same cases (``statistics:
  paired``), and with every required comparison of the run tested together (``multiplicity: holm``);
* the candidate's latency and tokens keep their bounds (:mod:`gateway.promote.summary`).

Decisions are made in two steps because Holm's correction ranks the comparisons of *all* cohorts: each cohort is
measured first, then the run's family of comparisons is tested, then each cohort gets its verdict.

Required evaluators: those the settings name (an evaluator that applies to no case of the cohort is skipped; one
that applies to fewer than ``min_cases`` holds the cohort), else every deterministic evaluator that applies to at
least ``min_cases`` cases of the cohort. Reported-only evaluators (``agreement``) are never required or compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.policy.schema import PolicySpec, PromotionSpec
from gateway.promote.compare import Comparison as Comparison
from gateway.promote.compare import compare, in_family, shortfall
from gateway.promote.judge import JUDGE_EVALUATORS
from gateway.promote.noninferiority import CASES_CAP, Evidence, family_verdicts
from gateway.promote.runner import Trial
from gateway.promote.scoring import CASE_EVALUATORS, REPORTED_ONLY
from gateway.promote.summary import ModelSummary as ModelSummary
from gateway.promote.summary import bounds, summarize


@dataclass(frozen=True)
class CohortDecision:
    cohort: str
    asked: bool
    cases: int
    incumbent: str | None
    models: dict[str, ModelSummary]
    comparisons: list[Comparison]
    reasons: list[str] = field(default_factory=list)
    """Why the cohort is held; empty when it is earned."""
    cases_needed: int | None = None
    """Held on its comparisons: the cases that would decide them all at the observed rates (see ``needed``)."""
    needed: str = ""
    """``cases_needed`` in words, or why there is no such number; empty when no comparison holds the cohort."""

    @property
    def earned(self) -> bool:
        return not self.reasons


def incumbent(spec: PolicySpec, cohort: str, candidate: str) -> str | None:
    """The model the cohort's route sends it to now (a split's heaviest arm), unless that is the candidate."""
    _, route = spec.route_for(cohort)
    if route.target is not None:
        return None if route.target == candidate else route.target
    arms = sorted((route.split or {}).items(), key=lambda arm: -arm[1])
    return next((model for model, _ in arms if model != candidate), None)


Group = tuple[str, Sequence[Trial], bool]
"""A cohort, its trials, and whether the candidate asks for it."""


def decide_cohort(
    cohort: str,
    trials: Sequence[Trial],
    *,
    candidate: str,
    baselines: Sequence[str],
    settings: PromotionSpec,
    spec: PolicySpec,
    asked: bool,
) -> CohortDecision:
    """One cohort on its own (its comparisons are the whole family)."""
    [decision] = decide_cohorts(
        [(cohort, trials, asked)], candidate=candidate, baselines=baselines, settings=settings, spec=spec
    )
    return decision


def decide_cohorts(
    groups: Sequence[Group], *, candidate: str, baselines: Sequence[str], settings: PromotionSpec, spec: PolicySpec
) -> list[CohortDecision]:
    """Every cohort of a run: measured, then the required comparisons of all of them tested as one family."""
    drafts = [_measure(*group, candidate, baselines, settings, spec) for group in groups]
    family = [(d, i) for d in drafts for i, c in enumerate(d.comparisons) if c.required and d.evidence[i] is not None]
    evidence = [e for d, i in family if (e := d.evidence[i]) is not None]
    alpha = (1 - settings.confidence) / 2
    verdicts = family_verdicts(evidence, settings.tolerance, alpha, settings.multiplicity)
    labels = [f"{d.cohort}/{d.comparisons[i].evaluator}" for d, i in family]
    for (draft, i), verdict, proof in zip(family, verdicts, evidence, strict=True):
        draft.comparisons[i] = in_family(draft.comparisons[i], verdict, proof, labels, settings.tolerance)
    return [_decision(d, settings) for d in drafts]


@dataclass
class _Draft:
    """A cohort measured, before the run's comparisons are tested."""

    cohort: str
    asked: bool
    cases: int
    reference: str | None
    models: dict[str, ModelSummary]
    comparisons: list[Comparison]
    evidence: list[Evidence | None]
    first: list[str]
    last: list[str]


def _measure(
    cohort: str,
    trials: Sequence[Trial],
    asked: bool,
    candidate: str,
    baselines: Sequence[str],
    settings: PromotionSpec,
    spec: PolicySpec,
) -> _Draft:
    models = {
        m: summarize(m, [t for t in trials if t.model == m], settings.confidence) for m in (candidate, *baselines)
    }
    applicable = _applicable_cases(t for t in trials if t.model == candidate)
    cases = len({t.case.id for t in trials})
    reasons: list[str] = []
    if cases < settings.min_cases:
        reasons.append(f"only {cases} cases (min_cases {settings.min_cases})")
    for name in baselines:
        if models[name].transport_errors:
            failed = models[name].transport_errors
            reasons.append(f"baseline {name}: {failed} requests failed in transport after retries, so no evidence")
    required = _required(settings, applicable, reasons if cases >= settings.min_cases else [])
    comparisons, evidence = [], []
    for name in sorted(applicable, key=_evaluator_order):
        comparison, proof = compare(
            name, trials, models, candidate, baselines, name in required, applicable[name], settings
        )
        comparisons.append(comparison)
        evidence.append(proof)
    reference = incumbent(spec, cohort, candidate)
    late = bounds(models, candidate, baselines, reference, settings)
    return _Draft(cohort, asked, cases, reference, models, comparisons, evidence, reasons, late)


_ORDER = [*CASE_EVALUATORS, *JUDGE_EVALUATORS]


def _evaluator_order(name: str) -> int:
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


def _applicable_cases(trials: Iterable[Trial]) -> dict[str, int]:
    """Evaluator name → how many distinct cases it applies to (the same for every model: applicability is per case)."""
    cases: dict[str, set[str]] = {}
    for trial in trials:
        for name in trial.outcomes:
            cases.setdefault(name, set()).add(trial.case.id)
    return {name: len(ids) for name, ids in cases.items()}


def _required(settings: PromotionSpec, applicable: dict[str, int], reasons: list[str]) -> set[str]:
    comparable = {name: count for name, count in applicable.items() if name not in REPORTED_ONLY}
    if settings.evaluators is None:
        required = {n for n, count in comparable.items() if count >= settings.min_cases and n not in JUDGE_EVALUATORS}
        if not required:
            reasons.append(f"no evaluator applies to at least {settings.min_cases} cases: nothing to compare")
        return required
    required = set()
    for name in settings.evaluators:
        count = comparable.get(name, 0)
        if 0 < count < settings.min_cases:
            reasons.append(f"{name} applies to only {count} cases (min_cases {settings.min_cases})")
        elif count:
            required.add(name)
    if not required:
        reasons.append("none of the required evaluators applies to this cohort's cases")
    return required


def _decision(draft: _Draft, s: PromotionSpec) -> CohortDecision:
    mine = next(iter(draft.models.values()))  # the candidate comes first
    shortfalls = [shortfall(c, mine, draft.models, s) for c in draft.comparisons if c.required and not c.ok]
    needed, words = _needed(draft.comparisons, s.tolerance)
    reasons = [*draft.first, *shortfalls, *draft.last]
    return CohortDecision(
        draft.cohort, draft.asked, draft.cases, draft.reference, draft.models, draft.comparisons, reasons, needed, words
    )


def _needed(comparisons: Sequence[Comparison], tolerance: float) -> tuple[int | None, str]:
    """The cases that would decide every comparison holding the cohort, at the observed rates and levels."""
    held = [c for c in comparisons if c.required and c.ok is False and c.p_value is not None]
    own = [c for c in held if c.blocked_by is None]
    if not own:
        if held:
            return None, f"its comparisons meet their own thresholds; Holm stopped at {held[0].blocked_by}"
        return None, ""
    for c in own:
        if c.delta is not None and c.delta <= -tolerance:
            where = "below" if c.delta < -tolerance else "at"
            return None, f"not at these rates: {c.evaluator} is {c.delta:+.1%}, {where} -{tolerance:.1%}"
    if any(c.cases_needed is None for c in own):
        return None, f"more than {CASES_CAP:,} cases at these rates"
    hardest = max(own, key=lambda c: c.cases_needed or 0)
    count = hardest.cases_needed or 0
    return count, f"{count} cases for {hardest.evaluator} at these rates (now {hardest.cases})"
