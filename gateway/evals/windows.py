"""EvalWindows: the last ``window.size`` pass/fail outcomes per (model, cohort, evaluator).

Outcomes arrive from four sources (online evaluators on primary answers, the same evaluators on shadow answers,
pushed offline results, user feedback); the window does not care which, so a gate sees one fail rate. Each window
also counts every outcome it ever saw, so a gate can ask for the fail rate over the outcomes *since* it tripped.

With fleet state (:mod:`gateway.fleet`), ``on_record`` hands every new outcome to the sync, and :meth:`replace`
puts the fleet's window (every instance's outcomes) in place of the local one, with this instance's outcomes not
yet sent appended: the gates then judge the fleet's evidence with the same code.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

Key = tuple[str, str, str]  # (model, cohort, evaluator)


@dataclass
class EvalWindow:
    size: int
    max_age_s: float | None = None
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)  # (when, failed)
    seen: int = 0  # every outcome ever recorded, for "new outcomes since" questions
    failed: int = 0  # failures among ``outcomes``, kept incrementally (fail_rate runs on every answer)

    def add(self, failed: bool, now: float) -> None:
        self.outcomes.append((now, failed))
        self.seen += 1
        self.failed += failed
        self.trim(self.size)

    def trim(self, size: int) -> None:
        while len(self.outcomes) > size:
            self.failed -= self.outcomes.popleft()[1]

    def prune(self, now: float) -> None:
        if self.max_age_s is None:
            return
        horizon = now - self.max_age_s
        while self.outcomes and self.outcomes[0][0] < horizon:
            self.failed -= self.outcomes.popleft()[1]

    def count(self, last: int | None = None) -> int:
        n = len(self.outcomes)
        return n if last is None else min(n, last)

    def fail_rate(self, last: int | None = None) -> float:
        """Share of failures among the window's outcomes (or its ``last`` ones); 0.0 when empty."""
        n = self.count(last)
        if n == 0:
            return 0.0
        if n == len(self.outcomes):
            return self.failed / n
        recent = list(self.outcomes)[-n:]
        return sum(1 for _, failed in recent if failed) / n


class EvalWindows:
    def __init__(
        self,
        size: int,
        max_age_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_record: Callable[[Key, bool], None] | None = None,
    ) -> None:
        self.size = size
        self.max_age_s = max_age_s
        self.on_record = on_record
        self._clock = clock
        self._windows: dict[Key, EvalWindow] = {}

    def resize(self, size: int, max_age_s: float | None) -> None:
        """Apply a reloaded policy's window settings, keeping the outcomes already collected."""
        self.size, self.max_age_s = size, max_age_s
        for window in self._windows.values():
            window.size, window.max_age_s = size, max_age_s
            window.trim(size)

    def record(self, key: Key, failed: bool) -> EvalWindow:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = EvalWindow(self.size, self.max_age_s)
        now = self._clock()
        window.add(failed, now)
        window.prune(now)
        if self.on_record is not None:
            self.on_record(key, failed)
        return window

    def replace(self, key: Key, outcomes: list[tuple[float, bool]], seen: int) -> EvalWindow:
        """Put ``outcomes`` (oldest first, ``(age_s, failed)``) and the count ``seen`` in place of the window."""
        now = self._clock()
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = EvalWindow(self.size, self.max_age_s)
        window.outcomes = deque((now - age, failed) for age, failed in outcomes[-self.size :])
        window.failed = sum(1 for _, failed in window.outcomes if failed)
        window.seen = seen
        window.prune(now)
        return window

    def keys(self) -> list[Key]:
        return list(self._windows)

    def get(self, key: Key) -> EvalWindow | None:
        window = self._windows.get(key)
        if window is not None:
            window.prune(self._clock())
        return window

    def items(self) -> Iterator[tuple[Key, EvalWindow]]:
        now = self._clock()
        for key, window in list(self._windows.items()):
            window.prune(now)
            yield key, window

    def drop_unknown(self, models: set[str], cohorts: set[str]) -> None:
        """Forget windows of models or cohorts a reloaded policy no longer has."""
        for key in [k for k in self._windows if k[0] not in models or k[1] not in cohorts]:
            del self._windows[key]
