"""A threshold for each semantic rule, from the labeled set: the one that serves the rule's cohort best.

Rules are taken in policy order, each with the ones before it at their suggested thresholds and the ones after it as
written (one pass of coordinate ascent). For a rule, the whole set is classified twice (the rule forced to hold, and
forced not to), which with each request's similarity gives the cohort's score at every observed similarity
(:class:`gateway.calibrate.metrics.RuleSweep`). The objective is the cohort's F1, or, with a target precision, the
most recall among the thresholds that reach it (on a tie in recall, the most precise). The threshold written is a
short decimal that classifies the set exactly as the chosen similarity does, and the set is classified once more
with it, through the classifier, to confirm the score. A threshold already as good as the best is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from gateway.calibrate.classify import Calibration
from gateway.calibrate.metrics import (
    RuleSweep,
    Score,
    best_for_f1,
    best_for_precision,
    score_cohorts,
    written_threshold,
)
from gateway.routing.semantic import SemanticRule


@dataclass(frozen=True)
class Suggestion:
    """What calibrating found for one rule: its ``threshold`` as written (``explicit``: written in the policy, not
    the default), the ``suggested`` one (None: keep it), the ``interval`` of thresholds that score as it does (above
    the first, None: any below the second, up to the second), and the rule's cohort's score ``before`` and ``after``
    (the same when kept); ``tried``: the distinct similarities observed. ``why`` says why a threshold is kept."""

    rule: SemanticRule
    threshold: float
    explicit: bool
    suggested: float | None
    interval: tuple[float | None, float] | None
    before: Score
    after: Score
    tried: int
    why: str = ""

    @property
    def changed(self) -> bool:
        return self.suggested is not None


async def suggest(calibration: Calibration, target_precision: float | None = None) -> list[Suggestion]:
    """One :class:`Suggestion` per semantic rule of the policy, in policy order."""
    labels = calibration.labels
    chosen: dict[str, float] = {}
    found = []
    for rule in calibration.rules:
        held = await calibration.predict({**chosen, rule.path: -math.inf})
        not_held = await calibration.predict({**chosen, rule.path: math.inf})
        sweep = RuleSweep(
            calibration.similarities(rule),
            [label == rule.cohort for label in labels],
            [got == rule.cohort for got in held],
            [got == rule.cohort for got in not_held],
        )
        suggestion = _choose(rule, sweep, target_precision)
        if suggestion.suggested is not None:
            chosen[rule.path] = suggestion.suggested
            confirmed = score_cohorts([rule.cohort], labels, await calibration.predict(chosen))[rule.cohort]
            if confirmed != suggestion.after:
                raise RuntimeError(f"calibrate: {rule.name}: the sweep said {suggestion.after}, got {confirmed}")
        found.append(suggestion)
    return found


def _choose(rule: SemanticRule, sweep: RuleSweep, target_precision: float | None) -> Suggestion:
    written = rule.spec.threshold
    explicit = "threshold" in rule.spec.model_fields_set
    before = sweep.at(written)
    candidates = sweep.candidates()
    keep = Suggestion(rule, written, explicit, None, None, before, before, sweep.distinct)
    if not candidates:
        return _kept(keep, "no labeled request has text for it to compare")
    if target_precision is None:
        best = best_for_f1(candidates)
        assert best is not None
        if before.f1 >= best.score.f1:
            return _kept(keep, "no threshold gives its cohort a higher F1")
    else:
        best = best_for_precision(candidates, target_precision)
        if best is None:
            return _kept(keep, f"no threshold reaches precision {target_precision:g}")
        if before.predicted and before.precision >= target_precision and before.recall >= best.score.recall:
            return _kept(keep, f"it reaches precision {target_precision:g} with the most recall")
    value = written_threshold(best)
    if value is None:
        return _kept(keep, "the best threshold is outside -1 to 1")
    interval = (best.floor, best.similarity)
    return Suggestion(rule, written, explicit, value, interval, before, best.score, sweep.distinct)


def _kept(keep: Suggestion, why: str) -> Suggestion:
    return replace(keep, why=why)


def thresholds_of(suggestions: Sequence[Suggestion]) -> dict[str, float]:
    """The changed thresholds, by rule path."""
    return {s.rule.path: s.suggested for s in suggestions if s.suggested is not None}
