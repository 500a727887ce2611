"""The embedder seam of ``semantic`` cohort rules, and the cache in front of it.

Kept free of the upstream stack (that is :mod:`gateway.routing.embedders`) so the classifier can name these types
without importing the transport. :class:`CachedEmbedder` is what classification should be given: a prompt seen
recently (a retried request, a popular question, the same conversation's next turn under ``text: last_user``)
costs no call. The cache holds vectors, not texts: its keys are the model's name and a 16-byte BLAKE2b digest of
the text, so it keeps no prompt content in memory.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float32]
Reason = Literal["timeout", "error", "unavailable"]


class EmbeddingUnavailable(Exception):
    """The vectors could not be had; ``reason`` is a metric label (timeout, error, unavailable)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


class Embedder(Protocol):
    async def embed(self, model: str, texts: Sequence[str], timeout_s: float) -> list[Vector]:
        """One vector per text, in order, for the policy model ``model``, within ``timeout_s`` seconds; raises
        :class:`EmbeddingUnavailable` on any failure."""
        ...


DEFAULT_CACHE_ENTRIES = 10_000
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
"""10,000 vectors of 1024 float32 coordinates are 40 MiB; the byte bound only matters for very wide models."""


class EmbeddingCache:
    """A bounded LRU map (model, text) → vector, by entry count and by bytes. Vectors are stored read-only and
    handed out as they are (no copy): callers must not write to them."""

    def __init__(self, max_entries: int = DEFAULT_CACHE_ENTRIES, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[str, bytes], Vector] = OrderedDict()

    @staticmethod
    def key(model: str, text: str) -> tuple[str, bytes]:
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        return model, digest

    def get(self, model: str, text: str) -> Vector | None:
        key = self.key(model, text)
        vector = self._entries.get(key)
        if vector is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return vector

    def put(self, model: str, text: str, vector: Vector) -> None:
        if vector.nbytes > self.max_bytes:
            return
        key = self.key(model, text)
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.nbytes
        vector.setflags(write=False)
        self._entries[key] = vector
        self.bytes += vector.nbytes
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= dropped.nbytes

    def clear(self) -> None:
        """Forget every vector (say, when a reload points a model name at a different embedding model)."""
        self._entries.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)


class CachedEmbedder:
    """An :class:`Embedder` that answers from ``cache`` what it can and asks ``inner`` for the rest (each distinct
    missing text once)."""

    def __init__(self, inner: Embedder, cache: EmbeddingCache | None = None) -> None:
        self.inner = inner
        self.cache = cache if cache is not None else EmbeddingCache()

    def cached(self, model: str, text: str) -> Vector | None:
        """The vector already known for ``text``: a caller can use it without scheduling a fetch."""
        return self.cache.get(model, text)

    async def embed(self, model: str, texts: Sequence[str], timeout_s: float) -> list[Vector]:
        found = [self.cache.get(model, text) for text in texts]
        missing = list(dict.fromkeys(t for t, v in zip(texts, found, strict=True) if v is None))
        if not missing:
            return [v for v in found if v is not None]
        fresh = dict(zip(missing, await self.inner.embed(model, missing, timeout_s), strict=True))
        for text, vector in fresh.items():
            self.cache.put(model, text, vector)
        return [v if v is not None else fresh[t] for t, v in zip(texts, found, strict=True)]
