"""The non-inferiority test behind every promotion: p-values, Holm's correction over a run, and cases needed.

A comparison claims that the candidate is *not worse than the baseline by more than the tolerance*. It is shown
when the lower bound of the difference's interval is at least ``-tolerance``; the burden of proof is on the
candidate. With a two-sided ``confidence`` that is a one-sided test at ``alpha = (1 - confidence) / 2``.

* **p-value:** the one-sided alpha at which the lower bound (of the interval at two-sided level ``1 - 2 alpha``)
  equals ``-tolerance``. The lower bound falls as the level rises, so the crossing is found by bisection on the
  normal quantile. When the observed difference is itself below ``-tolerance``, p is above 0.5 (found on the upper
  bound the same way).
* **Holm-Bonferroni:** a run makes many claims (every required evaluator of every cohort), and each one tested at
  ``alpha`` would let some candidate through by luck. Holm sorts the m p-values and earns them in order while
  ``p_(i) <= alpha / (m - i + 1)``; the first that fails stops the rest. The chance of wrongly earning any of them
  stays within ``alpha``.
* **Cases needed:** the smallest number of cases that would decide a held comparison, if the rates stayed as
  observed: the counts are scaled to ``n`` and ``n`` is searched (doubling, then bisection).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal, Protocol

Z_MAX = 37.0
"""Past this quantile the normal tail (about 1e-300) is below what a float holds."""
CASES_CAP = 1_000_000
"""The search for cases needed stops here."""
_NORMAL = NormalDist()


class Evidence(Protocol):
    """The outcomes behind one comparison (:class:`gateway.promote.stats.Paired` or ``Independent``)."""

    @property
    def method(self) -> str: ...

    @property
    def units(self) -> float:
        """Pairs (paired) or candidate outcomes (independent)."""
        ...

    @property
    def estimate(self) -> float: ...

    def interval(self, z: float) -> tuple[float, float]: ...

    def scaled(self, units: float) -> Evidence: ...


def z_one_sided(alpha: float) -> float:
    """The normal quantile that leaves ``alpha`` above it: 1.96 for 0.025."""
    return _NORMAL.inv_cdf(1 - alpha)


def holds_at(evidence: Evidence, tolerance: float, alpha: float) -> bool:
    """Whether the lower bound at one-sided ``alpha`` is at least ``-tolerance``: the comparison's verdict."""
    return evidence.interval(z_one_sided(alpha))[0] >= -tolerance


def p_value(evidence: Evidence, tolerance: float) -> float:
    """The one-sided p-value of non-inferiority by ``tolerance`` (see the module docstring)."""
    if evidence.estimate >= -tolerance:
        z = _crossing(lambda z: evidence.interval(z)[0] >= -tolerance)
        return _NORMAL.cdf(-z)
    z = _crossing(lambda z: evidence.interval(z)[1] < -tolerance)
    return _NORMAL.cdf(z)


def _crossing(holds: Callable[[float], bool]) -> float:
    """The largest z in [0, Z_MAX] at which ``holds`` (true at 0, false beyond some point), by bisection."""
    if holds(Z_MAX):
        return Z_MAX
    low, high = 0.0, Z_MAX
    for _ in range(64):  # 37 / 2**64: far below any p-value a report shows
        middle = (low + high) / 2
        low, high = (middle, high) if holds(middle) else (low, middle)
    return low


@dataclass(frozen=True)
class Tested:
    """One comparison's place in the family: its p-value, the level it had to meet, and the verdict.

    ``rank``: its place by p-value under Holm (None without a correction). ``blocked_by``: under Holm, the index of
    the comparison whose failure stopped the procedure before this one (this one met its own threshold).
    """

    p_value: float
    threshold: float
    rank: int | None
    ok: bool
    blocked_by: int | None = None


Multiplicity = Literal["holm", "none"]


def family_verdicts(
    family: Sequence[Evidence], tolerance: float, alpha: float, multiplicity: Multiplicity
) -> list[Tested]:
    """Every comparison of a run, tested together; results in the order given.

    The verdict at a threshold is read off the interval (:func:`holds_at`), not off the bisected p-value, so
    ``multiplicity: none`` decides exactly as the interval at ``confidence`` does.
    """
    p_values = [p_value(evidence, tolerance) for evidence in family]
    if multiplicity == "none":
        return [Tested(p, alpha, None, holds_at(e, tolerance, alpha)) for p, e in zip(p_values, family, strict=True)]
    m = len(family)
    order = sorted(range(m), key=lambda i: p_values[i])  # stable: equal p-values keep the run's order
    results: dict[int, Tested] = {}
    stopped_at: int | None = None
    for rank, index in enumerate(order, start=1):
        threshold = alpha / (m - rank + 1)
        own = holds_at(family[index], tolerance, threshold)
        ok = own and stopped_at is None
        results[index] = Tested(p_values[index], threshold, rank, ok, stopped_at if own and not ok else None)
        if not own and stopped_at is None:
            stopped_at = index
    return [results[i] for i in range(m)]


def units_needed(evidence: Evidence, tolerance: float, alpha: float, cap: int = CASES_CAP) -> int | None:
    """The fewest units (pairs, or outcomes per model) at the observed rates whose lower bound at one-sided
    ``alpha`` is at least ``-tolerance``. None: not at these rates (the observed difference is at or below
    ``-tolerance``, so more cases only pin the shortfall down), or not within ``cap``."""
    if evidence.estimate <= -tolerance:
        return None

    def holds(units: int) -> bool:
        return holds_at(evidence.scaled(units), tolerance, alpha)

    failing, passing = 0, max(1, math.ceil(evidence.units))  # no cases at all never hold
    while not holds(passing):
        failing, passing = passing, passing * 2
        if failing > cap:
            return None
    while passing - failing > 1:
        middle = (failing + passing) // 2
        failing, passing = (failing, middle) if holds(middle) else (middle, passing)
    return passing if passing <= cap else None
