"""RateLimiter: per-key token buckets for requests per minute and tokens per minute.

Requests are taken from their bucket before the call. Tokens are only known after the answer, so the token bucket
is checked before (it must not be in debt) and charged after with the answer's usage; a large answer can push it
into debt, which then delays the key's next requests, the usual approach for LLM token limits. The clock is a
parameter, so tests need no sleeping. Buckets live by key name across policy reloads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import GatewayError
from gateway.policy.schema import RateLimitSpec


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"retry-after": retry_after_header(self.retry_after_s)}


@dataclass
class TokenBucket:
    per_minute: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.per_minute, self.level + (now - self.updated) * self.per_minute / 60)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 when it is)."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60 / self.per_minute


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def _bucket(self, key: str, kind: str, per_minute: int) -> TokenBucket:
        bucket = self._buckets.get((key, kind))
        now = self._clock()
        if bucket is None or bucket.per_minute != per_minute:
            level = per_minute if bucket is None else min(bucket.level, per_minute)
            bucket = self._buckets[(key, kind)] = TokenBucket(per_minute, level, now)
        bucket.refill(now)
        return bucket

    def admit(self, key: str, spec: RateLimitSpec | None) -> None:
        """Take one request; raise :class:`RateLimited` (with retry-after) when the key is over a limit."""
        if spec is None:
            return
        if spec.tokens_per_min is not None:
            tokens = self._bucket(key, "tokens", spec.tokens_per_min)
            if tokens.level <= 0:
                wait = tokens.wait_for(1)
                raise RateLimited(f"key '{key}' is over its {spec.tokens_per_min} tokens per minute", wait)
        if spec.requests_per_min is not None:
            requests = self._bucket(key, "requests", spec.requests_per_min)
            wait = requests.wait_for(1)
            if wait > 0:
                raise RateLimited(f"key '{key}' is over its {spec.requests_per_min} requests per minute", wait)
            requests.level -= 1

    def charge_tokens(self, key: str, spec: RateLimitSpec | None, tokens: int) -> None:
        if spec is None or spec.tokens_per_min is None:
            return
        self._bucket(key, "tokens", spec.tokens_per_min).level -= tokens


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
