"""CircuitBreaker: keeps a failing backend out of rotation for a while, then lets a few probes test it.

    closed ──(consecutive_failures in a row, or error_rate over window_s with ≥ min_requests,
              or p99 latency over max_p99_s)──▶ open
    open ──(open_s elapsed)──▶ half_open: up to half_open_probes requests go through
    half_open ──(a probe succeeds)──▶ closed        half_open ──(a probe fails)──▶ open

The clock is a parameter, so tests drive the states without sleeping.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from gateway.policy.schema import BreakerSpec

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, spec: BreakerSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock
        self._state: State = "closed"
        self._opened_at = 0.0
        self._consecutive = 0
        self._probes = 0
        self._window: deque[tuple[float, bool, float]] = deque()  # (when, ok, latency seconds)
        self._failed = 0  # failures in the window, kept incrementally: record() is on every request's path
        self._p99_cache: tuple[int, float] = (-1, 0.0)  # (records seen when computed, p99)
        self._records = 0
        self.opened_count = 0
        self.last_reason = ""

    @property
    def state(self) -> State:
        if self._state == "open" and self._clock() - self._opened_at >= self.spec.open_s:
            self._state = "half_open"
            self._probes = 0
        return self._state

    def available(self) -> bool:
        """Whether a request may be sent now (without taking a half-open probe slot)."""
        state = self.state
        return state == "closed" or (state == "half_open" and self._probes < self.spec.half_open_probes)

    def acquire(self) -> bool:
        """Take permission for one request; in half-open this uses up one probe slot."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and self._probes < self.spec.half_open_probes:
            self._probes += 1
            return True
        return False

    def release(self) -> None:
        """Give back a half-open probe slot whose request ended without a verdict (the client went away)."""
        if self._state == "half_open" and self._probes > 0:
            self._probes -= 1

    def record(self, ok: bool, latency_s: float = 0.0) -> None:
        now = self._clock()
        self._window.append((now, ok, latency_s))
        self._records += 1
        if not ok:
            self._failed += 1
        self._prune(now)
        state = self.state
        if state == "half_open":
            if ok:
                self._close()
            else:
                self._open("a half-open probe failed")
            return
        self._consecutive = 0 if ok else self._consecutive + 1
        if state != "closed":
            return
        if self._consecutive >= self.spec.consecutive_failures:
            self._open(f"{self._consecutive} consecutive failures")
        elif len(self._window) >= self.spec.min_requests:
            failed = self._failed
            if failed / len(self._window) >= self.spec.error_rate:
                self._open(f"error rate {failed}/{len(self._window)} over {self.spec.window_s:g}s")
            elif self.spec.max_p99_s is not None and self.p99() > self.spec.max_p99_s:
                self._open(f"p99 latency {self.p99():.2f}s over {self.spec.max_p99_s:g}s")

    def p99(self) -> float:
        """p99 latency of successful requests in the window; recomputed at most every 50 records (it sorts)."""
        seen, cached = self._p99_cache
        if seen >= 0 and self._records - seen < 50 and self._records >= 50:
            return cached
        latencies = sorted(lat for _, ok, lat in self._window if ok)
        value = latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)] if latencies else 0.0
        self._p99_cache = (self._records, value)
        return value

    def _prune(self, now: float) -> None:
        horizon = now - self.spec.window_s
        while self._window and self._window[0][0] < horizon:
            if not self._window.popleft()[1]:
                self._failed -= 1

    def _open(self, reason: str) -> None:
        self._state = "open"
        self._opened_at = self._clock()
        self._consecutive = 0
        self._window.clear()
        self._failed = 0
        self.opened_count += 1
        self.last_reason = reason

    def _close(self) -> None:
        self._state = "closed"
        self._consecutive = 0
        self._probes = 0
        self._window.clear()
        self._failed = 0

    def reset(self) -> None:
        self._close()

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state,
            "consecutive_failures": self._consecutive,
            "window_requests": len(self._window),
            "opened_count": self.opened_count,
            "last_reason": self.last_reason,
        }
