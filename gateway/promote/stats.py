"""Pass rates with confidence intervals, and the non-inferiority test a promotion rests on.

A pass rate is reported with its Wilson score interval (well-behaved at 0 % and 100 % and for small counts, unlike
the normal approximation). The candidate-minus-baseline difference gets Newcombe's hybrid score interval (method 10
of Newcombe 1998), built from the two Wilson intervals. It treats the two samples as independent; on identical
inputs the answers are positively correlated, which makes the interval conservative (wider), the safe direction
for a promotion gate. A candidate is *not worse by more than the tolerance* when the interval's lower bound is at
least ``-tolerance``: the burden of proof is on the candidate, so few cases can never earn a cohort.
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


def wilson(passed: int, n: int, confidence: float) -> PassRate:
    if n == 0:
        return PassRate(0, 0, 0.0, 1.0)
    z = z_for(confidence)
    p = passed / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 % and 100 % the bound is exact; the formula leaves float noise there.
    low = 0.0 if passed == 0 else max(0.0, centre - half)
    high = 1.0 if passed == n else min(1.0, centre + half)
    return PassRate(passed, n, low, high)


def difference_interval(candidate: PassRate, baseline: PassRate) -> tuple[float, float]:
    """Newcombe's interval for ``candidate.rate - baseline.rate`` (same confidence as the two Wilson intervals)."""
    p1, p2 = candidate.rate, baseline.rate
    d = p1 - p2
    low = d - math.sqrt((p1 - candidate.low) ** 2 + (baseline.high - p2) ** 2)
    high = d + math.sqrt((candidate.high - p1) ** 2 + (p2 - baseline.low) ** 2)
    return max(-1.0, low), min(1.0, high)


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
