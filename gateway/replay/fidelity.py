"""How far a replay can be trusted: the records it reproduces, and what the capture did not keep.

``reproduced``: records captured under the very policy being replayed (their ``policy_version`` is its version) must
land as recorded; the share that does is the proof that capture and replay agree. ``not_reproducible``: a policy
whose rules read the request's text, replayed on records that lack it (``content: redacted`` or ``none``), and a
header a policy reads that the capture did not keep (it keeps the headers its own policy read, plus
``capture.headers``): such records are replayed as if the text were empty (or hashed) and the header absent.
"""

from __future__ import annotations

from typing import Any

from gateway.replay.diff import MAX_EXAMPLE_CHARS, side_json
from gateway.replay.features import TEXT_MATCHERS
from gateway.replay.reader import Captured
from gateway.replay.side import PolicyReplayer, Side

MAX_MISMATCHES = 5


class PolicyGaps:
    """What one replayed policy reads that the records lacked."""

    def __init__(self, label: str, replayer: PolicyReplayer) -> None:
        self.label = label
        self.replayer = replayer
        self.without_text = 0  # records without full content, for a policy with text rules
        self.reached_text = 0  # of which classification reached a text rule
        self.without_key = 0  # records naming no key, for a policy that requires one

    def observe(self, record: Captured, inexact: bool) -> None:
        if self.replayer.reads.text_cohorts and record.content != "full":
            self.without_text += 1
            self.reached_text += inexact
        if record.api_key is None and self.replayer.needs_keys:
            self.without_key += 1


class Fidelity:
    def __init__(self, sides: list[PolicyGaps], check: PolicyGaps) -> None:
        """``sides``: the replayed policies; ``check``: the one whose version is compared with the records'."""
        self.sides = sides
        self.check = check
        self.checked = 0
        self.matched = 0
        self.not_checked = {"inexact": 0, "previous_response": 0, "live_unrouted": 0}
        self.mismatches: list[dict[str, Any]] = []
        self.continues_response = 0
        self.live_unrouted = 0
        headers = {h for gaps in sides for h in gaps.replayer.reads.headers}
        self._kept_by = {
            h: frozenset(g.replayer.version for g in sides if h in g.replayer.reads.kept_headers) for h in headers
        }
        self._headers_seen: set[str] = set()
        self._headers_missing = dict.fromkeys(headers, 0)

    def observe(self, record: Captured) -> None:
        self.continues_response += record.continues_response
        seen = record.headers
        for header, kept_by in self._kept_by.items():
            if header in seen:
                self._headers_seen.add(header)
            elif record.policy_version not in kept_by:
                self._headers_missing[header] += 1

    def compare(self, record: Captured, replayed: Side, inexact: bool, live: Side | None) -> None:
        """Count ``record`` in ``reproduced`` when it was captured under the checked policy and nothing it lacks
        could have changed its replay (text or an embedder a rule it reached needs; a continued response)."""
        if record.policy_version != self.check.replayer.version:
            return
        if live is None:
            self.not_checked["live_unrouted"] += 1
            return
        if record.continues_response:
            self.not_checked["previous_response"] += 1
            return
        if inexact:
            self.not_checked["inexact"] += 1
            return
        self.checked += 1
        if replayed.same_as(live):
            self.matched += 1
        elif len(self.mismatches) < MAX_MISMATCHES:
            self.mismatches.append(
                {
                    "request_id": record.request_id[:MAX_EXAMPLE_CHARS],
                    "recorded": side_json(live),
                    "replayed": side_json(replayed),
                }
            )

    def reproduced_json(self) -> dict[str, Any]:
        loaded = self.check.replayer.loaded
        return {
            "checked": self.checked,
            "matched": self.matched,
            "policy": loaded.path,
            "version": loaded.version,
            "not_checked": self.not_checked,
            "mismatches": self.mismatches,
        }

    def not_reproducible_json(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for gaps in self.sides:
            reads = gaps.replayer.reads
            where = {"policy": gaps.label, "path": gaps.replayer.loaded.path}
            if gaps.without_text:
                out.append(
                    {
                        "kind": "content",
                        **where,
                        "cohorts": list(reads.text_cohorts),
                        "records": gaps.without_text,
                        "classified_past": gaps.reached_text,
                        "why": " and ".join(TEXT_MATCHERS[k] for k in reads.text_kinds) + " need capture content: full",
                    }
                )
            if gaps.replayer.needed_embedding:
                out.append(
                    {
                        "kind": "embedding",
                        **where,
                        "records": gaps.replayer.needed_embedding,
                        "why": "semantic rules need an embedder, which replay does not call: classified as if it "
                        "were down",
                    }
                )
            for header in sorted(reads.headers):
                missing = self._headers_missing[header]
                if missing and header not in self._headers_seen:
                    out.append(
                        {
                            "kind": "header",
                            **where,
                            "header": header,
                            "records": missing,
                            "why": f"no record has header '{header}' and none was captured under a policy known to "
                            "keep it (a capture keeps the headers its policy's rules read, plus capture.headers): "
                            "replayed as absent",
                        }
                    )
        return out

    def notes(self) -> list[str]:
        """One line per gap; a gap both policies share (the same text rules, the same header) is one line."""
        paths: dict[str, list[str]] = {}
        for item in self.not_reproducible_json():
            if item["kind"] == "content":
                note = (
                    f"{item['records']} records lack the request text that cohort(s) {', '.join(item['cohorts'])} "
                    f"read ({item['why']}); {item['classified_past']} of them reached such a rule"
                )
            else:
                note = f"{item['why']} ({item['records']} records)"
            paths.setdefault(note, []).append(item["path"])
        notes = [f"{' and '.join(where)}: {note}" for note, where in paths.items()]
        for gaps in self.sides:
            if gaps.without_key:
                notes.append(
                    f"{gaps.without_key} records name no key and {gaps.replayer.loaded.path} requires one: replayed "
                    "as 401 (a capture under a policy without keys does not know which key a client sent)"
                )
        if self.continues_response:
            notes.append(
                f"{self.continues_response} Responses requests continue an earlier response: live they went to the "
                "model that produced it, the replay plans them afresh"
            )
        if self.live_unrouted:
            notes.append(
                f"{self.live_unrouted} records failed live before routing (a rate limit, say): left out of the "
                "comparison with live"
            )
        return notes
