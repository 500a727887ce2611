"""Scores of a classification against labels, and a threshold sweep for one semantic rule.

Precision, recall and F1 are per cohort, one-vs-rest: precision is the share of the requests predicted in the cohort
that are labeled so, recall the share of those labeled so that are predicted in it. Where a ratio is undefined
(nothing predicted, nothing labeled) it is 0, as scikit-learn's ``zero_division=0`` has it.

:class:`RuleSweep` answers "what would this cohort score if this rule's threshold were t", for every t at once. A
request's prediction depends on the threshold only through whether its own similarity reaches it, so two
classifications of the whole set (the rule forced to hold, and forced not to) give the prediction at any threshold:
the first where ``similarity >= t``, the second elsewhere. The rest of the classifier, rule order included, is in
those two predictions; the sweep is then a cumulative sum over the similarities in descending order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Score:
    """One cohort's figures: ``support`` requests labeled in it, ``predicted`` predicted in it, ``hits`` both."""

    precision: float
    recall: float
    f1: float
    support: int
    predicted: int
    hits: int

    @classmethod
    def of(cls, hits: int, predicted: int, support: int) -> Score:
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return cls(precision, recall, f1, support, predicted, hits)


def score_cohorts(cohorts: Sequence[str], labels: Sequence[str], predictions: Sequence[str]) -> dict[str, Score]:
    """Each cohort's :class:`Score`, in ``cohorts`` order."""
    return {
        cohort: Score.of(
            sum(1 for label, got in zip(labels, predictions, strict=True) if label == got == cohort),
            sum(1 for got in predictions if got == cohort),
            sum(1 for label in labels if label == cohort),
        )
        for cohort in cohorts
    }


def confusion(cohorts: Sequence[str], labels: Sequence[str], predictions: Sequence[str]) -> list[list[int]]:
    """Counts by (labeled, predicted), rows and columns in ``cohorts`` order."""
    position = {cohort: i for i, cohort in enumerate(cohorts)}
    counts = [[0] * len(cohorts) for _ in cohorts]
    for label, got in zip(labels, predictions, strict=True):
        counts[position[label]][position[got]] += 1
    return counts


@dataclass(frozen=True)
class Candidate:
    """A range of thresholds tried: every threshold in (``floor``, ``similarity``] gives the cohort ``score``.
    ``similarity`` is an observed similarity (the requests at or above it hold the rule), ``floor`` a lower one, or
    None: below every one observed."""

    similarity: float
    floor: float | None
    score: Score


class RuleSweep:
    """One rule against one cohort. Per request: its ``similarity`` to the rule's examples (None: no text, the rule
    never holds), whether it is ``labeled`` in the cohort, and whether it is predicted in it when the rule ``held``
    and when it did ``not_held``."""

    def __init__(
        self,
        similarities: Sequence[float | None],
        labeled: Sequence[bool],
        held: Sequence[bool],
        not_held: Sequence[bool],
    ) -> None:
        sims = np.array([math.nan if s is None else s for s in similarities], dtype=np.float64)
        label = np.asarray(labeled, dtype=bool)
        on, off = np.asarray(held, dtype=bool), np.asarray(not_held, dtype=bool)
        self.support = int(label.sum())
        self._base_hits = int((label & off).sum())
        self._base_predicted = int(off.sum())
        known = ~np.isnan(sims)
        order = np.argsort(-sims[known], kind="stable")
        self._sims = sims[known][order]  # descending
        hit_gain = (label & on).astype(np.int64) - (label & off).astype(np.int64)
        predicted_gain = on.astype(np.int64) - off.astype(np.int64)
        self._hits = np.cumsum(hit_gain[known][order])
        self._predicted = np.cumsum(predicted_gain[known][order])

    @property
    def distinct(self) -> int:
        """How many distinct similarities were observed: the thresholds that can be told apart."""
        return int(np.unique(self._sims).size)

    def at(self, threshold: float) -> Score:
        """The cohort's score with the rule's threshold at ``threshold``."""
        count = int(np.count_nonzero(self._sims >= threshold))
        return self._score(count - 1)

    def candidates(self) -> list[Candidate]:
        """The thresholds worth telling apart, highest first: one per distinct observed similarity, neighbours
        that score the cohort alike merged into one (requests of other cohorts move, this one's figures do not)."""
        sims = self._sims
        ends = [i for i in range(len(sims)) if i + 1 == len(sims) or sims[i + 1] != sims[i]]
        merged: list[Candidate] = []
        for i in ends:
            floor = float(sims[i + 1]) if i + 1 < len(sims) else None
            score = self._score(i)
            if merged and merged[-1].score == score:
                merged[-1] = Candidate(merged[-1].similarity, floor, score)
            else:
                merged.append(Candidate(float(sims[i]), floor, score))
        return merged

    def _score(self, last: int) -> Score:
        """The score when the requests up to position ``last`` (descending similarity) hold the rule."""
        hits, predicted = self._base_hits, self._base_predicted
        if last >= 0:
            hits += int(self._hits[last])
            predicted += int(self._predicted[last])
        return Score.of(hits, predicted, self.support)


def best_for_f1(candidates: Sequence[Candidate]) -> Candidate | None:
    """The highest F1; among equals the higher precision, then the higher threshold (fewer surprises)."""
    return max(candidates, key=lambda c: (c.score.f1, c.score.precision, c.similarity), default=None)


def best_for_precision(candidates: Sequence[Candidate], target: float) -> Candidate | None:
    """The most recall among the thresholds whose precision reaches ``target`` (so the lowest of them, recall falling
    as the threshold rises); of thresholds with the same recall, the most precise: a lower one would only add false
    positives. None when none reaches it."""
    reaching = [c for c in candidates if c.score.predicted and c.score.precision >= target]
    return max(reaching, key=lambda c: (c.score.recall, c.score.precision, -c.similarity), default=None)


def written_threshold(candidate: Candidate) -> float | None:
    """A short decimal that classifies like ``candidate``: in (floor, similarity] and in the schema's [-1, 1], with
    the fewest digits, nearest the middle of the interval (the margin to both sides). None if none fits."""
    high = min(candidate.similarity, 1.0)
    low = candidate.floor if candidate.floor is not None else -1.0 - 1e-9
    if low >= high:
        return None
    middle = (max(low, -1.0) + high) / 2
    for digits in range(1, 8):
        step = 10.0**-digits
        first, last = math.floor(low / step) + 1, math.floor(high / step)
        fitting = [float(f"{k * step:.{digits}f}") for k in range(first, last + 1)]
        fitting = [v for v in fitting if low < v <= high and -1.0 <= v <= 1.0]
        if fitting:
            return min(fitting, key=lambda v: (abs(v - middle), -v))
    return high if high >= -1.0 else None
