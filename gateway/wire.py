"""OpenAI wire-format helpers shared by the gateway and the simulator.

Kept free of any web framework or HTTP client so that both sides of the wire (and tests) can use them.
"""

from __future__ import annotations

from typing import Any

import orjson

SSE_DONE = b"data: [DONE]\n\n"


def dumps(obj: Any) -> bytes:
    """Compact JSON, the way vLLM writes it (no spaces)."""
    return orjson.dumps(obj)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def error_body(message: str, type_: str, *, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def sse_event(obj: Any) -> bytes:
    """One server-sent event carrying a JSON payload, framed as vLLM frames it."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def is_openai_error(obj: Any) -> bool:
    """True when ``obj`` already has OpenAI's nested error shape (so it can be passed through as is)."""
    return isinstance(obj, dict) and isinstance(obj.get("error"), dict) and isinstance(obj["error"].get("message"), str)
