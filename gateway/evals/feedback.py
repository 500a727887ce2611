"""FeedbackCache: which model answered a recent request, for which client key, so ``POST /v1/feedback`` can be
attributed and checked.

Entries are keyed by (client key name, request id): a key finds only its own requests, and since ``x-request-id``
may be chosen by the client, two keys sending the same id never see or overwrite each other's entry. A request id
is scored at most once; the mark survives a later request reusing the id, so resending a request does not buy a
second vote. Bounded (least recently stored first out): feedback on a very old request is answered 404 rather than
letting memory grow with traffic.
"""

from __future__ import annotations

from collections import OrderedDict
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


class FeedbackCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str | None, str], AnsweredRequest] = OrderedDict()

    def remember(self, request_id: str, model: str, cohort: str, key: str | None) -> None:
        """``key`` is the client key's name, None when the gateway runs without keys."""
        entry = (key, request_id)
        previous = self._entries.get(entry)
        self._entries[entry] = AnsweredRequest(model, cohort, previous is not None and previous.scored)
        self._entries.move_to_end(entry)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def claim(self, request_id: str, key: str | None) -> AnsweredRequest:
        """The answer ``key`` may now score, marked scored; raises :class:`UnknownRequest` or
        :class:`FeedbackAlreadyRecorded`."""
        found = self._entries.get((key, request_id))
        if found is None:
            raise UnknownRequest("no recent answer you may score has that request id", param="request_id")
        if found.scored:
            raise FeedbackAlreadyRecorded("feedback for this request id was already recorded", param="request_id")
        found.scored = True
        return found

    def __len__(self) -> int:
        return len(self._entries)
