"""``POST /v1/embeddings``: bodies, vectors, and the answer in vLLM's shape.

Vectors are deterministic and unit-length, built by feature hashing (no model): each lower-cased word adds its
weight (its length, capped at 10: longer words say more than "a" or "my") at a hashed, signed coordinate, and a
third of that weight again spread over its character trigrams (so "charge" and "charged" are near). Texts that
share words therefore have a high cosine similarity and texts that share none about zero: "I was charged twice
for my order" and "charged twice on my card" score about 0.7, either and "what is the weather in Paris" about 0.
Token-id inputs hash each id as a word. ``dimensions`` keeps the first coordinates and renormalises, as a
matryoshka model does; ``encoding_format: base64`` is little-endian float32, as vLLM and OpenAI send it.
"""

from __future__ import annotations

import base64
import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Literal, cast

from gateway.sim import fields
from gateway.sim.errors import bad_request
from gateway.sim.shapes import usage

MAX_INPUTS = 2048
"""OpenAI's limit on inputs per request; more is a 400 (bounded work)."""
MAX_WORD_WEIGHT = 10.0
TRIGRAM_SHARE = 0.35
"""Weight of a word's trigrams, together, relative to the word's own."""
_WORD = re.compile(r"\w+")

Encoding = Literal["float", "base64"]


@dataclass(frozen=True, slots=True)
class EmbeddingsCall:
    """A parsed ``/v1/embeddings`` body: each input with its token count (words, or ids)."""

    model: str | None
    inputs: tuple[str | tuple[int, ...], ...]
    tokens: tuple[int, ...]
    encoding_format: Encoding
    dimensions: int | None

    @property
    def prompt_tokens(self) -> int:
        return sum(self.tokens)

    @property
    def work(self) -> int:
        """Roughly how many features hashing takes: worth a thread past a few hundred thousand."""
        return sum(len(i) for i in self.inputs)


def parse_embeddings(body: object) -> EmbeddingsCall:
    """Validate a body: ``input`` is a string, a list of strings, token ids, or a list of token-id lists."""
    body, model, _, _ = fields.common(body)
    raw = body.get("input")
    if raw is None:
        raise fields.missing("input")
    inputs = _inputs(raw)
    if inputs is None:
        raise fields.wrong("input", "a string, a list of strings, a list of token ids or a list of such lists")
    if len(inputs) > MAX_INPUTS:
        raise bad_request(f"At most {MAX_INPUTS} inputs are supported per request, got {len(inputs)}.", "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise fields.wrong("encoding_format", "'float' or 'base64'")
    encoding = cast(Encoding, encoding)
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)):
        raise fields.wrong("dimensions", "a valid integer")
    if dimensions is not None and dimensions < 1:
        raise bad_request("Dimensions must be greater than 0", "dimensions")
    tokens = tuple(len(i) if isinstance(i, tuple) else fields.words(i) for i in inputs)
    return EmbeddingsCall(model, inputs, tokens, encoding, dimensions)


def _ids(value: object) -> tuple[int, ...] | None:
    if isinstance(value, list) and value and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return tuple(value)
    return None


def _inputs(raw: object) -> tuple[str | tuple[int, ...], ...] | None:
    if isinstance(raw, str):
        return (raw,)
    ids = _ids(raw)
    if ids is not None:
        return (ids,)
    if not isinstance(raw, list) or not raw:
        return None
    items: list[str | tuple[int, ...]] = []
    for item in raw:
        value = item if isinstance(item, str) else _ids(item)
        if value is None:
            return None
        items.append(value)
    return tuple(items)


def check_dimensions(call: EmbeddingsCall, model: str, size: int) -> int:
    """The vector length to answer: ``dimensions`` when the model's ``embedding_dim`` allows it."""
    if call.dimensions is None:
        return size
    if call.dimensions > size:
        raise bad_request(
            f"Model {model!r} makes {size}-dimensional embeddings; dimensions={call.dimensions} is too large.",
            "dimensions",
        )
    return call.dimensions


def embed(value: str | tuple[int, ...], size: int) -> list[float]:
    """A unit vector of ``size`` coordinates for a text or token ids (see the module docstring)."""
    vector = [0.0] * size

    def add(feature: str, weight: float) -> None:
        h = zlib.crc32(feature.encode("utf-8", errors="replace"))
        vector[h % size] += weight if h & 0x80000000 else -weight

    words = [f"#{i}" for i in value] if isinstance(value, tuple) else _WORD.findall(value.lower())
    for word in words or ["<empty>"]:
        weight = min(float(len(word)), MAX_WORD_WEIGHT)
        add("w:" + word, weight)
        padded = f"<{word}>"
        grams = [padded[i : i + 3] for i in range(len(padded) - 2)]
        for gram in grams:
            add("c:" + gram, TRIGRAM_SHARE * weight / len(grams))
    return normalise(vector)


def normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def embed_all(call: EmbeddingsCall, size: int, dimensions: int) -> list[list[float]]:
    """Every input's vector, cut to ``dimensions`` coordinates (renormalised) when fewer than ``size``."""
    vectors = [embed(value, size) for value in call.inputs]
    if dimensions < size:
        vectors = [normalise(v[:dimensions]) for v in vectors]
    return vectors


def _encode(vector: list[float], encoding: Encoding) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def embeddings_body(
    eid: str, created: int, model: str, vectors: list[list[float]], call: EmbeddingsCall
) -> dict[str, Any]:
    """vLLM's ``EmbeddingResponse``: ``embd-`` id, one ``embedding`` object per input, completion tokens 0."""
    return {
        "id": eid,
        "object": "list",
        "created": created,
        "model": model,
        "data": [
            {"index": i, "object": "embedding", "embedding": _encode(v, call.encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "usage": usage(call.prompt_tokens, 0),
    }
