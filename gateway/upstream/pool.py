"""BackendPool: the replicas of one model, and which one a request should try next.

A replica is *available* when its health checks pass, it is not drained, and its circuit breaker lets a request
through. Among available replicas the default pick is "power of two choices" on load (in-flight requests, plus
vLLM's own waiting queue when ``health.scrape_load`` is on): two random replicas, the less loaded wins. It spreads
load nearly as well as a full scan and never herds every request onto the replica that was idle a moment ago.
Affinity (``balance: prefix`` / ``session``) picks by rendezvous hash instead, so a key keeps its replica while
the set of replicas is stable and only the keys of a lost replica move; a saturated pick falls back to load.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from gateway.policy.schema import BreakerSpec, PolicySpec
from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.client import ConnectionSettings

log = logging.getLogger("gateway.pool")

SATURATION_MARGIN = 8
"""An affinity pick is *saturated* when it has this many more requests in flight than the least loaded replica
(and at least twice as many): then the request goes by load instead of by key."""


@dataclass(eq=False)
class Backend:
    model: str
    index: int  # position in the model's ``backends`` list
    url: str  # resolved base URL (``sim://`` already replaced by the embedded server's address)
    served_name: str
    breaker: CircuitBreaker
    authorization: str | None = None  # "Bearer <the backend's own key>" from the model's api_key
    connection: ConnectionSettings = field(default_factory=ConnectionSettings)
    inflight: int = 0
    healthy: bool = True
    drained: bool = False
    waiting: float = 0.0  # vLLM's vllm:num_requests_waiting, when scraped
    running: float = 0.0  # vLLM's vllm:num_requests_running, when scraped
    check_failures: int = 0
    check_passes: int = 0
    last_check_error: str = ""
    last_check_at: float = field(default=0.0)
    cooldown_until: float = 0.0  # time.monotonic() before which the backend asked not to be sent requests

    def cool_down(self, seconds: float) -> None:
        """Honour a backend's ``Retry-After``: out of rotation for ``seconds``, at most the breaker's ``open_s``."""
        self.cooldown_until = time.monotonic() + min(seconds, self.breaker.spec.open_s)

    @property
    def label(self) -> str:
        return f"{self.model}[{self.index}]"

    @property
    def available(self) -> bool:
        return (
            self.healthy
            and not self.drained
            and self.breaker.available()
            and (not self.cooldown_until or time.monotonic() >= self.cooldown_until)
        )

    def load(self, use_scraped: bool) -> float:
        return self.inflight + (self.waiting if use_scraped else 0.0)

    def snapshot(self) -> dict[str, object]:
        return {
            "model": self.model,
            "index": self.index,
            "url": self.url,
            "served_name": self.served_name,
            "healthy": self.healthy,
            "drained": self.drained,
            "available": self.available,
            "inflight": self.inflight,
            "vllm_waiting": self.waiting,
            "vllm_running": self.running,
            "last_check_error": self.last_check_error,
            "breaker": self.breaker.snapshot(),
        }


def _weight(key: str, backend: Backend) -> int:
    digest = hashlib.blake2b(f"{key}|{backend.url}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class BackendPool:
    def __init__(
        self,
        model: str,
        backends: list[Backend],
        rng: Callable[[], float] = random.random,
        scrape_load: bool = False,
    ) -> None:
        self.model = model
        self.backends = backends
        self._rng = rng
        self.scrape_load = scrape_load

    def available(self) -> list[Backend]:
        return [b for b in self.backends if b.available]

    def unavailable_reason(self) -> str | None:
        """Why no replica can take a request (``manual``, ``breaker``, ``unhealthy``), or None if one can."""
        if any(b.available for b in self.backends):
            return None
        live = [b for b in self.backends if not b.drained]
        if not live:
            return "manual"
        return "breaker" if any(b.healthy for b in live) else "unhealthy"

    def retry_after_s(self) -> float | None:
        """Seconds until a replica that asked for a pause (``Retry-After``) takes requests again, when that is all
        that keeps the model out; None otherwise."""
        now = time.monotonic()
        waits = [
            b.cooldown_until - now
            for b in self.backends
            if b.cooldown_until > now and b.healthy and not b.drained and b.breaker.available()
        ]
        return min(waits) if waits else None

    def order(self, limit: int, affinity_key: str | None = None) -> list[Backend]:
        """Up to ``limit`` distinct available replicas to try, best first."""
        candidates = self.available()
        if len(candidates) <= 1:
            return candidates[:limit]
        first = self._by_key(candidates, affinity_key) if affinity_key is not None else None
        if first is None:
            first = self._two_choices(candidates)
        rest = sorted((c for c in candidates if c is not first), key=lambda c: c.load(self.scrape_load))
        return [first, *rest][:limit]

    def _by_key(self, candidates: list[Backend], key: str) -> Backend | None:
        chosen = max(candidates, key=lambda b: _weight(key, b))
        least = min(c.load(self.scrape_load) for c in candidates)
        load = chosen.load(self.scrape_load)
        if load >= least + SATURATION_MARGIN and load >= 2 * least:
            return None
        return chosen

    def _two_choices(self, candidates: list[Backend]) -> Backend:
        n = len(candidates)
        a = int(self._rng() * n) % n
        b = int(self._rng() * (n - 1)) % (n - 1)
        b = b + 1 if b >= a else b
        first, second = candidates[a], candidates[b]
        return first if first.load(self.scrape_load) <= second.load(self.scrape_load) else second


class BackendRegistry:
    """Every model's pool. Built from the policy once the ``sim://`` backends have addresses."""

    def __init__(self, pools: dict[str, BackendPool]) -> None:
        self.pools = pools

    @classmethod
    def from_policy(
        cls,
        policy: PolicySpec,
        resolve: Callable[[str], str],
        clock: Callable[[], float] = time.monotonic,
        previous: BackendRegistry | None = None,
    ) -> BackendRegistry:
        """Pools for ``policy``; a backend that also existed in ``previous`` (same model and URL) keeps its state."""
        old = {(b.model, b.url): b for b in previous.all_backends()} if previous else {}
        pools = {}
        for name, spec in policy.models.items():
            served = spec.served_name or name
            authorization = _backend_key(name, spec.api_key)
            connection = ConnectionSettings(spec.tls, spec.max_connections)
            backends = []
            for i, raw_url in enumerate(spec.backends):
                url = resolve(raw_url).rstrip("/")
                kept = old.get((name, url))
                if kept is not None:
                    kept.index, kept.served_name, kept.authorization = i, served, authorization
                    kept.connection = connection
                    kept.breaker.spec = policy.health.breaker
                    backends.append(kept)
                else:
                    breaker = _breaker(policy.health.breaker, clock)
                    backends.append(Backend(name, i, url, served, breaker, authorization, connection))
            pools[name] = BackendPool(name, backends, scrape_load=policy.health.scrape_load)
        return cls(pools)

    def all_backends(self) -> Iterator[Backend]:
        for pool in self.pools.values():
            yield from pool.backends

    def retry_after_s(self, models: Iterable[str]) -> float | None:
        """The soonest end of a ``Retry-After`` pause among ``models``' replicas (for the client's answer)."""
        waits = [w for m in models if (pool := self.pools.get(m)) is not None and (w := pool.retry_after_s())]
        return min(waits) if waits else None

    def skip_reason(self, model: str, cohort: str) -> str | None:
        """A :class:`gateway.routing.planner.ModelFilter`: models with no available replica are skipped."""
        pool = self.pools.get(model)
        return pool.unavailable_reason() if pool is not None else "unhealthy"


def _backend_key(model: str, reference: str | None) -> str | None:
    if reference is None:
        return None
    value = os.environ.get(reference.removeprefix("env:"))
    if not value:
        log.error("model %r: %s is unset; requests go to its backends without a key", model, reference)
        return None
    return f"Bearer {value}"


def _breaker(spec: BreakerSpec, clock: Callable[[], float]) -> CircuitBreaker:
    return CircuitBreaker(spec, clock)
