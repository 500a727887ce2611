"""One evaluator of one cohort: the candidate against the best baseline, and how it fared in the run's family.

The best baseline is the one with the highest pass rate. With ``statistics: paired`` the two models' verdicts are
paired by case and repeat (n/a left out) and compared with Newcombe's paired interval; with no pairs, or with
``statistics: independent``, the two pass rates are compared as independent samples (:mod:`gateway.promote.stats`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from gateway.policy.schema import PromotionSpec
from gateway.promote.noninferiority import Evidence, Tested, units_needed
from gateway.promote.runner import Trial
from gateway.promote.scoring import REPORTED_ONLY
from gateway.promote.stats import Independent, Paired, z_for
from gateway.promote.summary import ModelSummary


@dataclass(frozen=True)
class Comparison:
    """The candidate against the best baseline on one evaluator; ``ok``: shown within tolerance (None: nothing to
    compare). ``delta`` and its interval (at ``confidence``) come from ``method``: ``paired`` over ``pairs`` pairs,
    of which ``only_candidate`` (b) and ``only_baseline`` (c) passed for one model only, or ``independent``.

    A required comparison is one of the run's family: ``p_value``, the ``threshold`` it had to meet (Holm: by its
    ``rank`` of ``family``), ``blocked_by`` (``cohort/evaluator`` where Holm stopped, when this one met its own
    threshold) and ``cases_needed`` (held: cases that would decide it at the observed rates; None: not at these
    rates).
    """

    evaluator: str
    required: bool
    cases: int
    best_baseline: str | None
    delta: float | None
    delta_low: float | None
    delta_high: float | None
    ok: bool | None
    method: str | None = None
    pairs: int = 0
    only_candidate: int = 0
    only_baseline: int = 0
    p_value: float | None = None
    threshold: float | None = None
    rank: int | None = None
    family: int = 0
    blocked_by: str | None = None
    cases_needed: int | None = None


def compare(
    name: str,
    trials: Sequence[Trial],
    models: dict[str, ModelSummary],
    candidate: str,
    baselines: Sequence[str],
    required: bool,
    cases: int,
    settings: PromotionSpec,
) -> tuple[Comparison, Evidence | None]:
    """The comparison with the best baseline (by pass rate), its interval at ``confidence``, and its evidence."""
    nothing = Comparison(name, required, cases, None, None, None, None, None)
    mine = models[candidate].rates.get(name)
    rated = [(b, models[b].rates[name]) for b in baselines if name in models[b].rates and models[b].rates[name].n]
    if name in REPORTED_ONLY or mine is None or not mine.n or not rated:
        return nothing, None
    best, theirs = max(rated, key=lambda item: item[1].rate)  # max keeps the first of equals: baseline order
    pairs = pairs_of(trials, name, candidate, best) if settings.statistics == "paired" else None
    proof: Evidence = Independent(mine.passed, mine.n, theirs.passed, theirs.n) if pairs is None else pairs
    low, high = proof.interval(z_for(settings.confidence))
    within = low >= -settings.tolerance
    comparison = replace(nothing, best_baseline=best, delta=proof.estimate, delta_low=low, delta_high=high, ok=within)
    if pairs is None:
        return replace(comparison, method=proof.method), proof
    b, c = int(pairs.only_candidate), int(pairs.only_baseline)
    return replace(comparison, method=proof.method, pairs=int(pairs.units), only_candidate=b, only_baseline=c), proof


def pairs_of(trials: Sequence[Trial], name: str, candidate: str, baseline: str) -> Paired | None:
    """The candidate's and the baseline's verdicts on the same case and repeat (n/a left out); None: no pairs."""
    verdicts: dict[str, dict[tuple[str, int], bool]] = {candidate: {}, baseline: {}}
    for trial in trials:
        scored = trial.outcomes.get(name)
        if trial.model in verdicts and scored is not None and scored.verdict != "n/a":
            verdicts[trial.model].setdefault((trial.case.id, trial.repeat), scored.verdict == "pass")
    mine, theirs = verdicts[candidate], verdicts[baseline]
    counts = Counter((mine[key], theirs[key]) for key in mine.keys() & theirs.keys())
    if not counts:
        return None
    return Paired(counts[True, True], counts[True, False], counts[False, True], counts[False, False])


def in_family(c: Comparison, verdict: Tested, proof: Evidence, labels: list[str], tolerance: float) -> Comparison:
    """The comparison with its verdict in the run's family, and the cases that would decide it when held."""
    blocked = None if verdict.blocked_by is None else labels[verdict.blocked_by]
    needed = None
    if not verdict.ok and blocked is None:
        units = units_needed(proof, tolerance, verdict.threshold)
        needed = None if units is None else math.ceil(units * c.cases / proof.units)
    return replace(
        c,
        ok=verdict.ok,
        p_value=verdict.p_value,
        threshold=verdict.threshold,
        rank=verdict.rank,
        family=len(labels),
        blocked_by=blocked,
        cases_needed=needed,
    )


def shortfall(c: Comparison, candidate: ModelSummary, models: dict[str, ModelSummary], s: PromotionSpec) -> str:
    if c.best_baseline is None or c.delta is None or c.delta_low is None or c.delta_high is None:
        return f"{c.evaluator}: no outcomes to compare"
    mine, theirs = candidate.rates[c.evaluator], models[c.best_baseline].rates[c.evaluator]
    how = f"paired over {c.pairs} pairs: b={c.only_candidate}, c={c.only_baseline}" if c.method == "paired" else ""
    text = (
        f"{c.evaluator}: {mine.rate:.1%} vs {c.best_baseline} {theirs.rate:.1%}, difference {c.delta:+.1%} "
        f"({s.confidence:.0%} CI {c.delta_low:+.1%}..{c.delta_high:+.1%}{', ' + how if how else ''})"
    )
    if c.blocked_by is not None:
        return (
            f"{text}; p={c.p_value:.3g} meets its Holm threshold {c.threshold:.3g}, but Holm stopped at {c.blocked_by}"
        )
    if c.delta_low < -s.tolerance:
        return f"{text}; the lower bound is below -{s.tolerance:.1%}"
    return f"{text}; p={c.p_value:.3g} is above its Holm threshold {c.threshold:.3g} ({c.rank} of {c.family})"
