"""Redactor: the ``content: redacted`` form of a captured body, its structure with every text hidden.

Each string becomes a string of the same length (in code points) made of the hex of its keyed BLAKE2b hash,
repeated and cut. The length is what ``prompt_chars`` and the length matchers read, the structure is what every
other matcher reads, and the same text always gives the same string, so a redacted capture still classifies,
plans and deduplicates like the original. Values under routing keys (``model``, ``user``, ``metadata``, ``role``,
``type``, ``name``, ids...) are kept verbatim with their whole subtree; numbers, booleans, nulls and object keys
are kept everywhere. A secret ``hash_key`` stops anyone from confirming a guessed short text ("yes", a user name)
by hashing it themselves.
"""

from __future__ import annotations

import hashlib
from typing import Any

KEPT_KEYS = frozenset(
    {
        "model",
        "user",
        "metadata",
        "role",
        "type",
        "name",
        "tool_choice",
        "response_format",
        "stream",
        "stream_options",
        "previous_response_id",
        "tool_call_id",
        "id",
        "call_id",
    }
)
"""Keys whose values (with everything under them) routing reads or that carry no user text."""

PERSON = b"llm-gw-capture"
MAX_KEY_BYTES = 64  # BLAKE2b's key limit; a longer secret is hashed down to it


class Redactor:
    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and len(key) > MAX_KEY_BYTES:
            key = hashlib.blake2b(key).digest()
        self._key = key or b""

    def text(self, value: str) -> str:
        """A string as long as ``value`` made of its hash; the empty string stays empty."""
        if not value:
            return value
        digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), key=self._key, person=PERSON).hexdigest()
        return (digest * (len(value) // len(digest) + 1))[: len(value)]

    def body(self, value: Any) -> Any:
        """A copy of ``value`` with every string outside :data:`KEPT_KEYS` redacted. The depth is bounded by the
        request validation (``gateway.api.validation.MAX_JSON_DEPTH``), so recursion is safe."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: v if k in KEPT_KEYS else self.body(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.body(item) for item in value]
        return value
