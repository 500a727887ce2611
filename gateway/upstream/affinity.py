"""ResponseAffinity: which backend produced each recent Responses API answer, so a request that continues it
(``previous_response_id``) goes back there: vLLM keeps a response (and its conversation) in the memory of the
server that produced it, and no other replica knows it.

Bounded (least recently stored first out) and time-limited. Per gateway instance: a continuation sent through
another instance than the one that answered is routed as usual (see docs/endpoints.md).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Produced:
    model: str
    backend: str  # the backend's URL
    at: float


class ResponseAffinity:
    def __init__(self, capacity: int = 100_000, ttl_s: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, Produced] = OrderedDict()

    def remember(self, response_id: str, model: str, backend: str) -> None:
        self._entries[response_id] = Produced(model, backend, self._clock())
        self._entries.move_to_end(response_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def lookup(self, response_id: str) -> Produced | None:
        found = self._entries.get(response_id)
        if found is None or self._clock() - found.at > self.ttl_s:
            return None
        return found
