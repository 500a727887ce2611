"""What the classifier reads of a captured request, and what of it a capture may have lost.

With a body (``content: full`` or ``redacted``) the features are the gateway's own :class:`RequestFeatures` on it:
redaction keeps every string's length and the values matchers compare (model, user, metadata, roles, types), so
every matcher but the text-reading ones sees what it saw live. Without one (``content: none``) they come from the
record's ``routing`` view, and the text is empty. :class:`PolicyReads` names what a policy's rules read that a record
may lack: request text (:data:`TEXT_MATCHERS`) and headers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.policy.schema import Match, PolicySpec
from gateway.replay.reader import Captured
from gateway.routing.features import RequestFeatures

TEXT_MATCHERS: Mapping[str, str] = {"content": "content regexes", "semantic": "semantic rules"}
"""Matcher kinds that read the request's text (→ how a report names them), which only ``content: full`` keeps: a
replay of a redacted or content-less record cannot reproduce them. A new matcher that reads text goes here.
(``semantic`` rules also need an embedder, which a replay never calls: see ``PolicyReplayer.needed_embedding``.)"""


class RoutingFeatures(RequestFeatures):
    """The features of a record captured with ``content: none``: its ``routing`` view, and no text (every text
    property of :class:`RequestFeatures` is empty)."""

    def __init__(self, record: Captured) -> None:
        super().__init__({}, record.headers, record.api_key)
        self._record = record

    @property
    def model(self) -> str:
        return self._record.model

    @property
    def user(self) -> str | None:
        return self._record.user

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self._record.metadata

    @property
    def has_tools(self) -> bool:
        return self._record.has_tools

    @property
    def response_format(self) -> str:
        return self._record.response_format

    @property
    def user_text(self) -> str:
        return ""

    @property
    def last_user_text(self) -> str:
        return ""

    @property
    def all_text(self) -> str:
        return ""

    @property
    def prompt_chars(self) -> int:
        return self._record.prompt_chars

    def prefix_text(self, chars: int) -> str:
        return ""


def features_for(record: Captured) -> RequestFeatures:
    if record.body is not None:
        return RequestFeatures(record.body, record.headers, record.api_key)
    return RoutingFeatures(record)


def walk(match: Match) -> Iterator[tuple[str, Any]]:
    """Every (condition kind, value) in a match tree, nested ones (``any``, ``all``, ``not``) included."""
    for key in match.model_fields_set:
        value = getattr(match, key)
        yield key, value
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, Match):
                yield from walk(child)


@dataclass(frozen=True)
class PolicyReads:
    text_cohorts: tuple[str, ...]  # cohorts whose rule reads the request's text
    text_kinds: tuple[str, ...]  # the text-reading matcher kinds they use (keys of TEXT_MATCHERS)
    first_text_rule: int  # the index of the first such rule in ``cohorts`` (past the last cohort: none)
    headers: frozenset[str]  # header names the rules and rollouts read (lower-cased)
    kept_headers: frozenset[str]  # what a capture under this policy keeps: those and ``capture.headers``

    @classmethod
    def of(cls, policy: PolicySpec) -> PolicyReads:
        text: list[tuple[int, str]] = []
        kinds: set[str] = set()
        headers: set[str] = set()
        for index, cohort in enumerate(policy.cohorts):
            if cohort.match is None:
                continue
            for kind, value in walk(cohort.match):
                if kind in TEXT_MATCHERS:
                    kinds.add(kind)
                    if not text or text[-1][1] != cohort.name:
                        text.append((index, cohort.name))
                if kind == "header":
                    headers.update(name.lower() for name in value)
        for route in policy.routes.values():
            if route.rollout is not None and route.rollout.sticky.startswith("header:"):
                headers.add(route.rollout.sticky.removeprefix("header:").lower())
        captured = {name.lower() for name in policy.capture.headers} if policy.capture else set()
        return cls(
            text_cohorts=tuple(name for _, name in text),
            text_kinds=tuple(sorted(kinds)),
            first_text_rule=text[0][0] if text else len(policy.cohorts) + 1,
            headers=frozenset(headers),
            kept_headers=frozenset(headers | captured),
        )
