"""What one calibration found: the labeled set's predictions as written and as suggested, and each rule's
suggestion (made by :func:`gateway.calibrate.command.calibrate`, shown by :mod:`gateway.calibrate.report`)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.calibrate.labeled import LabeledRequest
from gateway.calibrate.suggest import Suggestion
from gateway.policy import LoadedPolicy


@dataclass(frozen=True)
class Outcome:
    """``written`` and ``suggested``: the predicted cohort of each labeled request, in file order; ``passes``: how
    many times the whole set was classified."""

    policy: LoadedPolicy
    labeled: list[LabeledRequest]
    written: list[str]
    suggestions: list[Suggestion]
    suggested: list[str]
    passes: int

    @property
    def cohorts(self) -> list[str]:
        return [cohort.name for cohort in self.policy.spec.cohorts]

    @property
    def labels(self) -> list[str]:
        return [item.cohort for item in self.labeled]
