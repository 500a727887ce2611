"""FleetRateLimiter: a client key's ``requests_per_min`` and ``tokens_per_min`` held for the fleet, not per instance.

Each limit is one token bucket for the whole fleet, kept in Redis: ``level`` tokens there, plus what each instance
holds. The request path never waits for Redis: an instance admits from what it *holds*, and at each sync (0.5 s
by default) it reports what it still holds and is topped up from the fleet's level towards its fair part,
``limit / live instances`` (an instance holding more gives the excess back). Redis refills the level at the limit's
rate but never above ``limit`` minus what the instances hold, so the tokens the fleet can spend at any moment add
up to one bucket's worth, whatever the number of instances: over any stretch of time the fleet admits at most
what a single bucket would (the limit, plus the refill of the stretch), within the refill of one sync period.

Spread traffic (a Service) gets the whole limit at once. Traffic that reaches one instance only gets that
instance's part at once, then the whole fleet's refill rate. An instance that stops syncing (gone) has its holding
released after a few seconds. A token limit is checked before a request (the holding must not be in debt) and
charged after it, like the per-process one: one answer may overshoot by its own size, and the debt is paid from
the next top-ups.

Without Redis (down, or not reached yet) an instance keeps going on its part: it refills what it holds itself, at
``limit / instances`` a minute and up to ``limit / instances``, with the number of instances it last knew of
(itself alone if it never reached Redis).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.policy.schema import RateLimitSpec
from gateway.ratelimit import RateLimited, RateLimiter


@dataclass
class SharedBucket:
    per_minute: int
    held: float  # tokens this instance may spend now
    updated: float
    instances: int = 1

    def refill_alone(self, now: float) -> None:
        """Redis is unreachable: refill this instance's part by itself."""
        rate = self.per_minute / 60 / self.instances
        self.held = min(max(self.held, self.per_minute / self.instances), self.held + (now - self.updated) * rate)
        self.updated = now

    def wait_for(self, needed: float) -> float:
        return max(0.1, needed - self.held) * 60 * self.instances / self.per_minute


class FleetRateLimiter(RateLimiter):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.instances = 1
        self.online = False  # the last sync reached Redis (else holdings refill locally)
        self._shared: dict[tuple[str, str], SharedBucket] = {}

    def _shared_bucket(self, key: str, kind: str, per_minute: int) -> SharedBucket:
        bucket = self._shared.get((key, kind))
        now = self._clock()
        if bucket is None or bucket.per_minute != per_minute:
            held = per_minute / self.instances if not self.online else 0.0
            bucket = self._shared[(key, kind)] = SharedBucket(per_minute, held, now, self.instances)
        if not self.online:
            bucket.refill_alone(now)
        else:
            bucket.updated = now
        return bucket

    def admit(self, key: str, spec: RateLimitSpec | None) -> None:
        if spec is None:
            return
        if spec.tokens_per_min is not None:
            tokens = self._shared_bucket(key, "tokens", spec.tokens_per_min)
            if tokens.held <= 0:
                message = f"key '{key}' is over its {spec.tokens_per_min} tokens per minute (fleet-wide)"
                raise RateLimited(message, tokens.wait_for(1))
        if spec.requests_per_min is not None:
            requests = self._shared_bucket(key, "requests", spec.requests_per_min)
            if requests.held < 1:
                message = f"key '{key}' is over its {spec.requests_per_min} requests per minute (fleet-wide)"
                raise RateLimited(message, requests.wait_for(1))
            requests.held -= 1

    def charge_tokens(self, key: str, spec: RateLimitSpec | None, tokens: int) -> None:
        if spec is None or spec.tokens_per_min is None:
            return
        self._shared_bucket(key, "tokens", spec.tokens_per_min).held -= tokens

    def prepare(self, limits: Iterable[tuple[str, RateLimitSpec]]) -> list[tuple[str, str, int, float]]:
        """Start a sync: ``(key, kind, per_minute, held)`` for every limit of the policy (each is synced, used or
        not, so every instance's holding is known to the fleet)."""
        out, wanted = [], set()
        for key, spec in limits:
            for kind, per_minute in (("requests", spec.requests_per_min), ("tokens", spec.tokens_per_min)):
                if per_minute is not None:
                    bucket = self._shared_bucket(key, kind, per_minute)
                    out.append((key, kind, per_minute, bucket.held))
                    wanted.add((key, kind))
        for gone in [k for k in self._shared if k not in wanted]:
            del self._shared[gone]
        return out

    def settle(self, grants: dict[tuple[str, str], tuple[float, int]]) -> None:
        """The sync's answer: per bucket, what the fleet granted (negative: taken back) and the live instances."""
        self.online = True
        for key, (grant, instances) in grants.items():
            bucket = self._shared.get(key)
            if bucket is not None:
                bucket.held += grant
                bucket.instances = self.instances = max(1, instances)

    def offline(self) -> None:
        """The sync failed: holdings refill locally until Redis answers again."""
        if self.online:
            now = self._clock()
            for bucket in self._shared.values():
                bucket.updated = now
        self.online = False
