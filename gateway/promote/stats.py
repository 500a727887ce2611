"""Pass rates with confidence intervals, and the candidate-minus-baseline difference a promotion rests on.

A pass rate is reported with its Wilson score interval (well-behaved at 0 % and 100 % and for small counts, unlike
the normal approximation). The difference of two pass rates gets one of Newcombe's square-and-add intervals, both
built from Wilson intervals:

* :class:`Paired` (Newcombe 1998, Stat Med 17:2635, method 10): the two models answered the same cases, counted as
  a 2x2 table of agreements. The correlation between the two rates (the phi coefficient of the table) narrows the
  interval: cases both models pass or both fail say little about which is better, and what decides is the
  *discordant* pairs, where only one of them passed.
* :class:`Independent` (Newcombe 1998, Stat Med 17:873, method 10): two unrelated samples, for when there is
  nothing to pair. On the same cases it is wider than it needs to be (the safe direction).

Both take fractional counts, so the same observed rates can be evaluated at another number of cases
(:mod:`gateway.promote.noninferiority` asks how many cases a comparison needs). ``z`` is the normal quantile of
one side: 1.96 gives a two-sided 95 % interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist


def z_for(confidence: float) -> float:
    """The two-sided normal quantile: 1.96 for 0.95."""
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


@dataclass(frozen=True)
class PassRate:
    """``passed`` of ``n`` outcomes (n/a excluded), with the Wilson interval ``[low, high]`` at some confidence."""

    passed: int
    n: int
    low: float
    high: float

    @property
    def failed(self) -> int:
        return self.n - self.passed

    @property
    def rate(self) -> float:
        return self.passed / self.n if self.n else 0.0


def wilson_bounds(passed: float, n: float, z: float) -> tuple[float, float]:
    """The Wilson score interval of ``passed / n`` (n > 0; counts may be fractional)."""
    p = passed / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / denominator
    # At 0 % and 100 % the bound is exact; the formula leaves float noise there.
    low = 0.0 if passed <= 0 else max(0.0, centre - half)
    high = 1.0 if passed >= n else min(1.0, centre + half)
    return low, high


def wilson(passed: int, n: int, confidence: float) -> PassRate:
    if n == 0:
        return PassRate(0, 0, 0.0, 1.0)
    return PassRate(passed, n, *wilson_bounds(passed, n, z_for(confidence)))


def difference_interval(candidate: PassRate, baseline: PassRate) -> tuple[float, float]:
    """Newcombe's independent-samples interval for ``candidate.rate - baseline.rate`` (at the confidence of the two
    Wilson intervals)."""
    return _square_and_add(candidate.rate, candidate.low, candidate.high, baseline.rate, baseline.low, baseline.high)


def _square_and_add(
    p1: float, l1: float, u1: float, p2: float, l2: float, u2: float, phi: float = 0.0
) -> tuple[float, float]:
    """Newcombe's interval for ``p1 - p2`` from the two rates' intervals and their correlation ``phi``."""
    down = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    up = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    d = p1 - p2
    return max(-1.0, d - math.sqrt(max(0.0, down))), min(1.0, d + math.sqrt(max(0.0, up)))


@dataclass(frozen=True)
class Independent:
    """Two samples of pass/fail outcomes with nothing to pair them by; ``units`` are the candidate's outcomes."""

    candidate_passed: float
    candidate_n: float
    baseline_passed: float
    baseline_n: float

    method = "independent"

    @property
    def units(self) -> float:
        return self.candidate_n

    @property
    def estimate(self) -> float:
        return self.candidate_passed / self.candidate_n - self.baseline_passed / self.baseline_n

    def interval(self, z: float) -> tuple[float, float]:
        l1, u1 = wilson_bounds(self.candidate_passed, self.candidate_n, z)
        l2, u2 = wilson_bounds(self.baseline_passed, self.baseline_n, z)
        p1, p2 = self.candidate_passed / self.candidate_n, self.baseline_passed / self.baseline_n
        return _square_and_add(p1, l1, u1, p2, l2, u2)

    def scaled(self, units: float) -> Independent:
        """The same rates at ``units`` candidate outcomes (the baseline's sample scaled alike)."""
        k = units / self.candidate_n
        return Independent(self.candidate_passed * k, units, self.baseline_passed * k, self.baseline_n * k)


@dataclass(frozen=True)
class Paired:
    """Pairs of outcomes on the same case (and repeat): ``both`` passed, ``only_candidate`` passed (b),
    ``only_baseline`` passed (c), ``neither`` passed. ``units`` are the pairs."""

    both: float
    only_candidate: float
    only_baseline: float
    neither: float

    method = "paired"

    @property
    def units(self) -> float:
        return self.both + self.only_candidate + self.only_baseline + self.neither

    @property
    def estimate(self) -> float:
        return (self.only_candidate - self.only_baseline) / self.units

    def interval(self, z: float) -> tuple[float, float]:
        """Newcombe's method 10 for paired data: the Wilson intervals of the two marginal rates, combined with the
        table's phi coefficient (:attr:`phi`)."""
        a, b, c, n = self.both, self.only_candidate, self.only_baseline, self.units
        l1, u1 = wilson_bounds(a + b, n, z)
        l2, u2 = wilson_bounds(a + c, n, z)
        return _square_and_add((a + b) / n, l1, u1, (a + c) / n, l2, u2, self.phi)

    @property
    def phi(self) -> float:
        """``(ad - bc) / sqrt((a+b)(c+d)(a+c)(b+d))``, 0 when a margin is empty. As in the paper (its published
        intervals need it), a positive ``ad - bc`` is first reduced by ``n/2``, to no less than 0: a small-sample
        correction that keeps a few concordant pairs from claiming a strong correlation."""
        a, b, c, d = self.both, self.only_candidate, self.only_baseline, self.neither
        margins = (a + b) * (c + d) * (a + c) * (b + d)
        if margins <= 0:
            return 0.0
        association = a * d - b * c
        if association > 0:
            association = max(0.0, association - self.units / 2)
        return association / math.sqrt(margins)

    def scaled(self, units: float) -> Paired:
        """The same proportions of the four kinds of pair at ``units`` pairs."""
        k = units / self.units
        return Paired(self.both * k, self.only_candidate * k, self.only_baseline * k, self.neither * k)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
