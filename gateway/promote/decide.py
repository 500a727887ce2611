"""Per cohort: has the candidate earned it? Pass rates, non-inferiority on every required evaluator, latency, tokens.

A cohort is *earned* when all of these hold, and *held* (with every reason listed) otherwise:

* it has at least ``min_cases`` cases, and no baseline lost requests to transport errors (a baseline that could not
  be reached is no evidence, and its zeros would flatter the candidate; a 4xx is an answer and counts as a failure);
* on every required evaluator, the lower bound of the candidate-minus-best-baseline interval is at least
  ``-tolerance`` (see :mod:`gateway.promote.stats`);
* the candidate's p95 time to first token and total time stay under the absolute bounds, and its p95 total time and
  mean output tokens under ``max_*_ratio`` times the reference model's: the cohort's incumbent (the model its route
  sends it to now) when it was evaluated, else the best baseline by that measure.

Required evaluators: those the settings name (an evaluator that applies to no case of the cohort is skipped; one
that applies to fewer than ``min_cases`` holds the cohort), else every deterministic evaluator that applies to at
least ``min_cases`` cases of the cohort.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gateway.policy.schema import PolicySpec, PromotionSpec
from gateway.promote.judge import JUDGE_EVALUATORS
from gateway.promote.runner import Trial
from gateway.promote.scoring import CASE_EVALUATORS
from gateway.promote.stats import PassRate, difference_interval, mean, percentile, wilson


@dataclass(frozen=True)
class ModelSummary:
    """One model on one cohort. Seconds for latencies; tokens per answer."""

    model: str
    trials: int
    errors: int
    transport_errors: int
    rates: dict[str, PassRate]
    ttft_p50: float | None
    ttft_p95: float | None
    total_p50: float | None
    total_p95: float | None
    prompt_tokens_mean: float | None
    completion_tokens_mean: float | None


@dataclass(frozen=True)
class Comparison:
    """The candidate against the best baseline on one evaluator; ``ok``: within tolerance (None: nothing to compare)."""

    evaluator: str
    required: bool
    cases: int
    best_baseline: str | None
    delta: float | None
    delta_low: float | None
    delta_high: float | None
    ok: bool | None


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


def summarize(model: str, trials: Sequence[Trial], confidence: float) -> ModelSummary:
    outcomes: dict[str, list[bool]] = {}
    for trial in trials:
        for name, scored in trial.outcomes.items():
            if scored.verdict != "n/a":
                outcomes.setdefault(name, []).append(scored.verdict == "pass")
    answered = [t.reply.answer for t in trials if t.reply.answer is not None]
    ttft = [a.ttft_s for a in answered if a.ttft_s is not None]
    total = [a.total_s for a in answered]
    prompt = [float(t.reply.prompt_tokens) for t in trials if t.reply.prompt_tokens is not None]
    completion = [float(a.completion_tokens) for a in answered if a.completion_tokens is not None]
    return ModelSummary(
        model=model,
        trials=len(trials),
        errors=sum(1 for t in trials if t.reply.error is not None),
        transport_errors=sum(1 for t in trials if t.reply.transport_error),
        rates={name: wilson(sum(v), len(v), confidence) for name, v in sorted(outcomes.items())},
        ttft_p50=percentile(ttft, 50),
        ttft_p95=percentile(ttft, 95),
        total_p50=percentile(total, 50),
        total_p95=percentile(total, 95),
        prompt_tokens_mean=mean(prompt),
        completion_tokens_mean=mean(completion),
    )


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
    comparisons = [
        _compare(name, models, candidate, baselines, name in required, applicable[name], settings.tolerance)
        for name in sorted(applicable, key=_evaluator_order)
    ]
    for comparison in comparisons:
        if comparison.required and not comparison.ok:
            reasons.append(_shortfall(comparison, models[candidate], models, settings))
    reference = incumbent(spec, cohort, candidate)
    reasons.extend(_bounds(models, candidate, baselines, reference, settings))
    return CohortDecision(cohort, asked, cases, reference, models, comparisons, reasons)


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
    if settings.evaluators is None:
        required = {n for n, count in applicable.items() if count >= settings.min_cases and n not in JUDGE_EVALUATORS}
        if not required:
            reasons.append(f"no evaluator applies to at least {settings.min_cases} cases: nothing to compare")
        return required
    required = set()
    for name in settings.evaluators:
        count = applicable.get(name, 0)
        if 0 < count < settings.min_cases:
            reasons.append(f"{name} applies to only {count} cases (min_cases {settings.min_cases})")
        elif count:
            required.add(name)
    if not required:
        reasons.append("none of the required evaluators applies to this cohort's cases")
    return required


def _compare(
    name: str,
    models: dict[str, ModelSummary],
    candidate: str,
    baselines: Sequence[str],
    required: bool,
    cases: int,
    tolerance: float,
) -> Comparison:
    mine = models[candidate].rates.get(name)
    rated = [(b, models[b].rates[name]) for b in baselines if name in models[b].rates and models[b].rates[name].n]
    if mine is None or not mine.n or not rated:
        return Comparison(name, required, cases, None, None, None, None, None)
    best, theirs = max(rated, key=lambda item: item[1].rate)  # max keeps the first of equals: baseline order
    low, high = difference_interval(mine, theirs)
    return Comparison(name, required, cases, best, mine.rate - theirs.rate, low, high, low >= -tolerance)


def _shortfall(comparison: Comparison, mine: ModelSummary, models: dict[str, ModelSummary], s: PromotionSpec) -> str:
    name = comparison.evaluator
    if comparison.best_baseline is None or comparison.delta_low is None or comparison.delta is None:
        return f"{name}: no outcomes to compare"
    theirs = models[comparison.best_baseline].rates[name]
    return (
        f"{name}: {mine.rates[name].rate:.1%} vs {comparison.best_baseline} {theirs.rate:.1%}, difference "
        f"{comparison.delta:+.1%} ({s.confidence:.0%} CI {comparison.delta_low:+.1%}..{comparison.delta_high:+.1%}); "
        f"the lower bound is below -{s.tolerance:.1%}"
    )


Measure = Callable[[ModelSummary], float | None]


def _bounds(
    models: dict[str, ModelSummary],
    candidate: str,
    baselines: Sequence[str],
    reference: str | None,
    s: PromotionSpec,
) -> list[str]:
    mine = models[candidate]
    problems = []
    for label, value, bound in (
        ("p95 TTFT", mine.ttft_p95, s.max_p95_ttft_s),
        ("p95 total", mine.total_p95, s.max_p95_total_s),
    ):
        if bound is not None and value is not None and value > bound:
            problems.append(f"{label} {value:.3f}s over the {bound:g}s bound")
    measures: tuple[tuple[str, Measure, float | None], ...] = (
        ("p95 total", lambda m: m.total_p95, s.max_latency_ratio),
        ("mean output tokens", lambda m: m.completion_tokens_mean, s.max_tokens_ratio),
    )
    for label, measure, ratio in measures:
        value = measure(mine)
        if ratio is None or value is None:
            continue
        reference_model, limit_of = _reference(models, baselines, reference, measure)
        if limit_of is not None and limit_of > 0 and value > ratio * limit_of:
            problems.append(f"{label} {value:.3g} is over {ratio:g}x {reference_model}'s {limit_of:.3g}")
    return problems


def _reference(
    models: dict[str, ModelSummary], baselines: Sequence[str], reference: str | None, measure: Measure
) -> tuple[str | None, float | None]:
    """The incumbent's value when it was measured, else the best (lowest) baseline's."""
    if reference is not None and reference in models and measure(models[reference]) is not None:
        return reference, measure(models[reference])
    measured = [(b, value) for b in baselines if (value := measure(models[b])) is not None]
    if not measured:
        return None, None
    return min(measured, key=lambda item: item[1])
