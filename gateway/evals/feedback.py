"""FeedbackCache: which model answered a recent request, so ``POST /v1/feedback`` can be attributed.

Bounded (least recently stored ids are forgotten first): feedback on a very old request is answered 404 rather
than letting memory grow with traffic.
"""

from __future__ import annotations

from collections import OrderedDict


class FeedbackCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def remember(self, request_id: str, model: str, cohort: str) -> None:
        self._entries[request_id] = (model, cohort)
        self._entries.move_to_end(request_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def lookup(self, request_id: str) -> tuple[str, str] | None:
        return self._entries.get(request_id)

    def __len__(self) -> int:
        return len(self._entries)
