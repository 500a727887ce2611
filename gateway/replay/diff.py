"""The routing diff: counts of requests that move from one (cohort, first model) to another, and of new errors.

Memory is bounded whatever the capture's size: a count and at most :data:`MAX_EXAMPLES` request ids per move, and
at most :data:`MAX_MOVES` distinct moves (a live outcome names cohorts the record chose, so a hostile file could
name a new one on every line); the moves past that are counted together.
"""

from __future__ import annotations

from typing import Any

from gateway.replay.side import Side

MAX_EXAMPLES = 3
MAX_EXAMPLE_CHARS = 128
MAX_MOVES = 1000
OTHER_MOVES = (Side("(other moves)", None), Side("(other moves)", None))


class Tally:
    __slots__ = ("count", "examples", "inexact")

    def __init__(self) -> None:
        self.count = 0
        self.inexact = 0  # requests whose replay lacked what a rule reads (text, an embedder)
        self.examples: list[str] = []

    def add(self, request_id: str, inexact: bool = False) -> None:
        self.count += 1
        self.inexact += inexact
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(request_id[:MAX_EXAMPLE_CHARS])


class ReplayDiff:
    def __init__(self) -> None:
        self.total = 0
        self.changed = 0
        self.moves: dict[tuple[Side, Side], Tally] = {}
        self.new_errors: dict[tuple[int, str | None], Tally] = {}

    def add(self, request_id: str, before: Side, after: Side, inexact: bool = False) -> None:
        """``inexact``: a replayed side's classification reached a rule that reads what the replay lacks (text the
        record did not keep, an embedder), so the move may be the capture's loss rather than the policy's change."""
        self.total += 1
        if before.same_as(after):
            return
        self.changed += 1
        key = (before, after)
        tally = self.moves.get(key)
        if tally is None:
            if len(self.moves) >= MAX_MOVES:
                key = OTHER_MOVES
            tally = self.moves.setdefault(key, Tally())
        tally.add(request_id, inexact)
        if after.status is not None and before.status is None:
            error = (after.status, after.code)
            self.new_errors.setdefault(error, Tally()).add(request_id)

    @property
    def changed_share(self) -> float:
        return self.changed / self.total if self.total else 0.0

    def share(self, count: int) -> float:
        return round(count / self.total, 6) if self.total else 0.0

    def moves_json(self) -> list[dict[str, Any]]:
        ordered = sorted(self.moves.items(), key=lambda item: (-item[1].count, _order(item[0][0]), _order(item[0][1])))
        return [
            {
                "from": side_json(before),
                "to": side_json(after),
                "count": tally.count,
                "share": self.share(tally.count),
                "inexact": tally.inexact,
                "examples": tally.examples,
            }
            for (before, after), tally in ordered
        ]

    def new_errors_json(self) -> list[dict[str, Any]]:
        ordered = sorted(self.new_errors.items(), key=lambda item: (-item[1].count, item[0][0], item[0][1] or ""))
        return [
            {
                "status": status,
                "code": code,
                "count": tally.count,
                "share": self.share(tally.count),
                "examples": tally.examples,
            }
            for (status, code), tally in ordered
        ]


def side_json(side: Side) -> dict[str, Any]:
    return {"cohort": side.cohort, "model": side.model, "status": side.status, "error": side.code}


def _order(side: Side) -> tuple[str, str, int]:
    return (side.cohort or "", side.model or "", side.status or 0)
