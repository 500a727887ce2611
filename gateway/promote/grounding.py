"""Lexical groundedness: which share of an answer's content words also occur in the retrieved passages.

A cheap, deterministic proxy with known blind spots: a paraphrase scores low, a fluent contradiction built from the
passages' own words scores high. It catches answers that ignore the context altogether; ``--judge`` is the tool for
anything finer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)?")
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between both
    but by can could did do does doing down during each few for from further had has have having he her here hers him
    his how i if in into is it its itself just me more most my no nor not now of off on once only or other our ours
    out over own same she should so some such than that the their theirs them then there these they this those
    through to too under until up very was we were what when where which while who whom why will with would you your
    yours yourself please thanks thank hello hi yes also may might must shall""".split()
)


def content_words(text: str) -> list[str]:
    """Lower-cased words of ``text`` minus stopwords and one-letter words; numbers count as words."""
    words = (w.lower().replace("\u2019", "'") for w in _WORD.findall(text))
    return [w for w in words if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]


def overlap(answer: str, passages: Iterable[str]) -> tuple[float, int]:
    """(share of the answer's content words found in ``passages``, how many content words the answer has)."""
    words = content_words(answer)
    if not words:
        return 0.0, 0
    known = {w for passage in passages for w in content_words(passage)}
    return sum(1 for w in words if w in known) / len(words), len(words)
