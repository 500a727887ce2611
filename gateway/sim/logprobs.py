"""Per-token log probabilities for simulated answers, in the three shapes vLLM answers them.

One entry per piece (a piece is one token here). The chosen token is the most likely one, so it heads its own
``top_logprobs``; alternatives are other vocabulary words, strictly less likely, in descending order. Values
come from their own RNG (seeded from the content), so asking for logprobs never changes the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random
from typing import Any

from gateway.sim.content import VOCABULARY


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]
    """The ``top_logprobs`` alternatives, chosen token first; empty when none were asked for."""


def token_logprobs(pieces: list[str], top_k: int, rng: Random) -> tuple[TokenLogprob, ...]:
    """Log probabilities (natural log, <= 0) for each piece, with ``top_k`` alternatives each."""
    entries = []
    for piece in pieces:
        chosen = -round(rng.expovariate(5.0), 4)
        top: list[tuple[str, float]] = []
        if top_k:
            top.append((piece, chosen))
            space = " " if piece.startswith(" ") else ""
            others = [space + w for w in VOCABULARY if space + w != piece]
            value = chosen
            for word in rng.sample(others, min(top_k - 1, len(others))):
                value = round(value - 0.05 - rng.expovariate(1.0), 4)
                top.append((word, value))
        entries.append(TokenLogprob(piece, chosen, tuple(top)))
    return tuple(entries)


def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs(entries: tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """A chat choice's ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    return {"content": [_full(e) for e in entries]}


def _full(entry: TokenLogprob) -> dict[str, Any]:
    return {
        "token": entry.token,
        "logprob": entry.logprob,
        "bytes": _utf8(entry.token),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": _utf8(t)} for t, lp in entry.top],
    }


def completion_logprobs(entries: tuple[TokenLogprob, ...], offset: int = 0) -> dict[str, Any]:
    """A completion choice's ``logprobs``; ``text_offset`` counts characters of generated text from ``offset``."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "text_offset": offsets,
        "token_logprobs": [e.logprob for e in entries],
        "tokens": [e.token for e in entries],
        "top_logprobs": [dict(e.top or ((e.token, e.logprob),)) for e in entries],
    }


def response_logprobs(entries: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    """A Responses ``output_text``'s ``logprobs``: the chat entries, as a list."""
    return [_full(e) for e in entries]


def response_delta_logprobs(entries: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    """A ``response.output_text.delta`` event's ``logprobs``: no ``bytes``."""
    return [
        {
            "token": e.token,
            "logprob": e.logprob,
            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in e.top],
        }
        for e in entries
    ]
