"""BackendPool: the replicas of one model, and which one a request should try next.

Picking is "power of two choices" on in-flight requests: two random replicas, the less busy one wins. It spreads
load nearly as well as a full scan and never herds every request onto the replica that was idle a moment ago.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from gateway.policy.schema import PolicySpec


@dataclass
class Backend:
    model: str
    index: int  # position in the model's ``backends`` list
    url: str  # resolved base URL (``sim://`` already replaced by the embedded server's address)
    served_name: str
    inflight: int = 0

    @property
    def label(self) -> str:
        return f"{self.model}[{self.index}]"


class BackendPool:
    def __init__(self, model: str, backends: list[Backend], rng: Callable[[], float] = random.random) -> None:
        self.model = model
        self.backends = backends
        self._rng = rng

    def available(self) -> list[Backend]:
        return list(self.backends)

    def order(self, limit: int) -> list[Backend]:
        """Up to ``limit`` distinct replicas to try, best first."""
        candidates = self.available()
        if len(candidates) <= 1:
            return candidates[:limit]
        a, b = self._two(len(candidates))
        first = candidates[a] if candidates[a].inflight <= candidates[b].inflight else candidates[b]
        rest = sorted((c for c in candidates if c is not first), key=lambda c: c.inflight)
        return [first, *rest][:limit]

    def _two(self, n: int) -> tuple[int, int]:
        a = int(self._rng() * n) % n
        b = int(self._rng() * (n - 1)) % (n - 1)
        return a, b + 1 if b >= a else b


class BackendRegistry:
    """Every model's pool. Built from the policy once the ``sim://`` backends have addresses."""

    def __init__(self, pools: dict[str, BackendPool]) -> None:
        self.pools = pools

    @classmethod
    def from_policy(cls, policy: PolicySpec, resolve: Callable[[str], str]) -> BackendRegistry:
        pools = {}
        for name, spec in policy.models.items():
            served = spec.served_name or name
            backends = [Backend(name, i, resolve(url).rstrip("/"), served) for i, url in enumerate(spec.backends)]
            pools[name] = BackendPool(name, backends)
        return cls(pools)

    def all_backends(self) -> Iterator[Backend]:
        for pool in self.pools.values():
            yield from pool.backends
