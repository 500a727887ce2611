"""FleetRateLimiter: a client key's ``requests_per_min`` and ``tokens_per_min`` held for the fleet, not per instance.

The fleet's token bucket lives in Redis (refilled by Redis's clock, in one script for every bucket). The request
path never waits for it: at each sync an instance sends what it took since the last one and receives the fleet's
level, and until the next sync it may take only its *share* of that level, ``level / live instances``, plus its
share of the refill. The shares of all instances add up to the level, so instances that sync alike cannot
together pass the limit between two syncs; what can overshoot is one request per instance per sync (a share is
spent while it is above zero) and the refill an instance counts for itself on a stale count of live instances
(for at most the heartbeat horizon after one joins). Over a minute that is within a few per cent of a limit of
some hundreds a minute on a handful of instances.

Without Redis (down, or not reached yet) an instance keeps going on its share: a bucket of ``limit / instances``
refilled at ``limit / instances`` a minute, the instances it last knew of (itself alone if it never reached Redis).
What it took meanwhile is sent when Redis is back, so the fleet's level accounts for it.
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
    share: float  # this instance's part of the fleet's level at the last sync
    synced: float  # when that was (the instance's clock)
    instances: int = 1
    used: float = 0.0  # taken here since the last sync began
    sending: float = 0.0  # taken here and being sent now

    def allowance(self, now: float) -> float:
        rate = self.per_minute / 60 / self.instances
        cap = self.per_minute / self.instances
        return min(cap, self.share + (now - self.synced) * rate) - self.used - self.sending

    def wait_for(self, allowance: float) -> float:
        return (1e-3 - allowance) * 60 * self.instances / self.per_minute


class FleetRateLimiter(RateLimiter):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.instances = 1
        self._shared: dict[tuple[str, str], SharedBucket] = {}

    def _shared_bucket(self, key: str, kind: str, per_minute: int) -> SharedBucket:
        bucket = self._shared.get((key, kind))
        if bucket is None or bucket.per_minute != per_minute:
            share = per_minute / self.instances
            bucket = self._shared[(key, kind)] = SharedBucket(per_minute, share, self._clock(), self.instances)
        return bucket

    def admit(self, key: str, spec: RateLimitSpec | None) -> None:
        if spec is None:
            return
        now = self._clock()
        if spec.tokens_per_min is not None:
            tokens = self._shared_bucket(key, "tokens", spec.tokens_per_min)
            left = tokens.allowance(now)
            if left <= 0:
                message = f"key '{key}' is over its {spec.tokens_per_min} tokens per minute (fleet-wide)"
                raise RateLimited(message, tokens.wait_for(left))
        if spec.requests_per_min is not None:
            requests = self._shared_bucket(key, "requests", spec.requests_per_min)
            left = requests.allowance(now)
            if left <= 0:
                message = f"key '{key}' is over its {spec.requests_per_min} requests per minute (fleet-wide)"
                raise RateLimited(message, requests.wait_for(left))
            requests.used += 1

    def charge_tokens(self, key: str, spec: RateLimitSpec | None, tokens: int) -> None:
        if spec is None or spec.tokens_per_min is None:
            return
        self._shared_bucket(key, "tokens", spec.tokens_per_min).used += tokens

    def prepare(self, limits: Iterable[tuple[str, RateLimitSpec]]) -> list[tuple[str, str, int, float]]:
        """Start a sync: ``(key, kind, per_minute, used)`` for every limit of the policy (each is synced, used or
        not, so a share is never older than one sync); what was used moves to ``sending``."""
        out = []
        wanted = set()
        for key, spec in limits:
            for kind, per_minute in (("requests", spec.requests_per_min), ("tokens", spec.tokens_per_min)):
                if per_minute is None:
                    continue
                bucket = self._shared_bucket(key, kind, per_minute)
                bucket.sending, bucket.used = bucket.sending + bucket.used, 0.0
                out.append((key, kind, per_minute, bucket.sending))
                wanted.add((key, kind))
        for gone in [k for k in self._shared if k not in wanted]:
            del self._shared[gone]
        return out

    def settle(self, levels: dict[tuple[str, str], float], instances: int) -> None:
        """The sync's answer: the fleet's level of each bucket after what this instance sent."""
        self.instances = max(1, instances)
        now = self._clock()
        for key, bucket in self._shared.items():
            level = levels.get(key)
            if level is None:
                continue
            bucket.share, bucket.synced, bucket.sending = level / self.instances, now, 0.0
            bucket.instances = self.instances

    def unsent(self) -> None:
        """The sync failed: what was being sent is sent again next time."""
        for bucket in self._shared.values():
            bucket.used, bucket.sending = bucket.used + bucket.sending, 0.0
