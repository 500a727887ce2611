"""FeedbackCache: which model answered a recent request, for which client key, so ``POST /v1/feedback`` can be
attributed and checked.

Entries are keyed by (client key name, request id): a key finds only its own requests, and since ``x-request-id``
may be chosen by the client, two keys sending the same id never see or overwrite each other's entry. A request id
is scored at most once; the mark survives a later request reusing the id, so resending a request does not buy a
second vote. Bounded (least recently stored first out, and at most ``evals.feedback_ttl_s`` old): feedback on a
very old request is answered 404 rather than letting memory grow with traffic.

With fleet state (:mod:`gateway.fleet`), ``on_remember`` hands each answered request to the sync, so feedback sent
to another instance finds it, and the claim is made in the fleet's store first (:meth:`FleetState.claim_feedback`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import GatewayError


class UnknownRequest(GatewayError):
    """No recent answer to this key has the id: never seen, forgotten, or another key's (indistinguishable)."""

    status = 404
    type = "invalid_request_error"
    code = "request_not_found"


class FeedbackAlreadyRecorded(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "feedback_already_recorded"


@dataclass(slots=True)
class AnsweredRequest:
    model: str
    cohort: str
    scored: bool = False
    at: float = 0.0


class FeedbackCache:
    def __init__(
        self,
        capacity: int,
        ttl_s: float = 3_600.0,
        clock: Callable[[], float] = time.monotonic,
        on_remember: Callable[[str | None, str, str, str], None] | None = None,
    ) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.on_remember = on_remember  # (key, request id, model, cohort)
        self._clock = clock
        self._entries: OrderedDict[tuple[str | None, str], AnsweredRequest] = OrderedDict()

    def remember(self, request_id: str, model: str, cohort: str, key: str | None) -> None:
        """``key`` is the client key's name, None when the gateway runs without keys."""
        entry = (key, request_id)
        previous = self._entries.get(entry)
        self._entries[entry] = AnsweredRequest(model, cohort, previous is not None and previous.scored, self._clock())
        self._entries.move_to_end(entry)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        if self.on_remember is not None:
            self.on_remember(key, request_id, model, cohort)

    def claim(self, request_id: str, key: str | None) -> AnsweredRequest:
        """The answer ``key`` may now score, marked scored; raises :class:`UnknownRequest` or
        :class:`FeedbackAlreadyRecorded`."""
        found = self._entries.get((key, request_id))
        if found is None or self._clock() - found.at > self.ttl_s:
            raise UnknownRequest("no recent answer you may score has that request id", param="request_id")
        if found.scored:
            raise FeedbackAlreadyRecorded("feedback for this request id was already recorded", param="request_id")
        found.scored = True
        return found

    def mark_scored(self, request_id: str, key: str | None) -> None:
        """The fleet recorded a score for this id (possibly through another instance)."""
        found = self._entries.get((key, request_id))
        if found is not None:
            found.scored = True

    def __len__(self) -> int:
        return len(self._entries)
