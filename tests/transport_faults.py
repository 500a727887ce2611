"""The faults a backend can commit, as :class:`tests.rawbackend.RawBackend` scripts; a policy to reach them; and
the client side of the conformance tests (requests, SSE parsing, what a clean error looks like).

Each script is registered under a served model name. :func:`policy` gives every one two registry models, pinned by
name in the tests: ``NAME`` (no fallback) and ``fb-NAME`` (falls back to ``good``, a healthy backend of its own);
both send the served name ``NAME``, so the raw backend runs the same fault for either. Any other served name gets
the healthy :func:`tests.rawbackend.echo`.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import itertools
import json
import os
from dataclasses import dataclass
from typing import Any

import httpx

from tests.harness import Stack
from tests.rawbackend import (
    DONE_EVENT,
    Exchange,
    RawBackend,
    Script,
    chunked,
    chunked_answer,
    completion,
    delta,
    echo_answer,
    echo_text,
    encode,
    head,
    json_answer,
    sse_answer,
    sse_event,
    usage_chunk,
)

TOTAL_S = 2.0
MAX_ANSWER_BYTES = 24_000_000
SSE_HEAD = head(200, "OK", {"content-type": "text/event-stream", "transfer-encoding": "chunked"})
SMUGGLED = "SMUGGLED-FOREIGN-ANSWER"


def own(ex: Exchange) -> bytes:
    return encode(completion(echo_text(ex.request)))


def foreign_answer() -> bytes:
    return json_answer(encode(completion(SMUGGLED)))


def writes(*parts: Any) -> Script:
    """A script that writes each part (bytes, or a function of the exchange) with a short pause in between."""

    async def script(ex: Exchange) -> None:
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(0.03)
            await ex.send(part(ex) if callable(part) else part)

    return script


def drip(prefix: bytes, rest: bytes) -> Script:
    """Send ``prefix`` at once, then ``rest`` one byte every 0.2 s (at most 12 s, or until the gateway left)."""

    async def script(ex: Exchange) -> None:
        await ex.send(prefix)
        await ex.send_pieces([rest[i : i + 1] for i in range(min(len(rest), 60))], 0.2)
        ex.close()

    return script


def comments_forever(prefix: bytes) -> Script:
    async def script(ex: Exchange) -> None:
        await ex.send(prefix)
        await ex.send_pieces([chunked(b": ping\n\n")] * 60, 0.2)
        ex.close()

    return script


async def eat(ex: Exchange) -> None:
    """Reads the whole request (the dispatcher already did), then closes without a word."""
    ex.close()


async def close_after_head(ex: Exchange) -> None:
    """Reads only the request's head and closes: the body never arrives."""
    ex.close()


@functools.cache
def big_json(size: int) -> bytes:
    return encode(completion("x" * size))


@functools.cache
def gzip_bomb() -> bytes:
    return gzip.compress(encode(completion("0" * 30_000_000)), 9)


def sse_of(*events: bytes) -> Script:
    return writes(lambda ex: sse_answer(list(events)))


def framed(text: bytes) -> Script:
    """An SSE answer whose event stream is ``text`` exactly (one chunk), for framing variants."""
    return writes(lambda ex: SSE_HEAD + chunked(text) + b"0\r\n\r\n")


WORDS = ["alpha", " beta", " gamma"]
D = [encode(delta(w)) for w in WORDS]
U = encode(usage_chunk())
MULTILINE = b"".join(b"data: " + d.replace(b'"choices": ', b'"choices":\ndata: ') + b"\n\n" for d in D)
FRAMINGS = {
    "sse-multiline": MULTILINE + b"data: [DONE]\n\n",
    "sse-crlf": b"".join(b"data: " + d + b"\r\n\r\n" for d in (*D, U, b"[DONE]")),
    "sse-cr": b"".join(b"data: " + d + b"\r\r" for d in (*D, U, b"[DONE]")),
    "sse-comments": b": hello\n\n" + b"".join(b": ping\ndata: " + d + b"\n\n: pong\n\n" for d in (*D, b"[DONE]")),
    "sse-fields": b"".join(b"event: message\nid: %d\nretry: 5000\ndata: " % i + d + b"\n\n" for i, d in enumerate(D))
    + b"data: [DONE]\n\n",
}

FAULTS: dict[str, Script] = {
    "interim-100": writes(b"HTTP/1.1 100 Continue\r\n\r\n", echo_answer),
    "interim-103": writes(
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        echo_answer,
    ),
    "overrun": writes(lambda ex: json_answer(own(ex)) + b"TRAILING-GARBAGE-NOT-HTTP"),
    "smuggle": writes(lambda ex: json_answer(own(ex)) + foreign_answer()),
    "smuggle-chunked": writes(lambda ex: chunked_answer([own(ex)[:20], own(ex)[20:]]) + foreign_answer()),
    "smuggle-late": writes(lambda ex: json_answer(own(ex)), lambda ex: foreign_answer()),
    "big-5m": writes(lambda ex: json_answer(big_json(5_000_000))),
    "big-20m": writes(
        lambda ex: chunked_answer([big_json(20_000_000)[i : i + 65536] for i in range(0, 20_000_200, 65536)])
    ),
    "over-cap": writes(lambda ex: json_answer(big_json(30_000_000))),
    "over-cap-chunked": writes(
        lambda ex: chunked_answer([big_json(30_000_000)[i : i + (1 << 20)] for i in range(0, 30_000_200, 1 << 20)])
    ),
    "gzip-bomb": writes(lambda ex: json_answer(gzip_bomb(), **{"content-encoding": "gzip"})),
    "status-204": writes(b"HTTP/1.1 204 No Content\r\n\r\n"),
    "status-304": writes(b'HTTP/1.1 304 Not Modified\r\netag: "x"\r\n\r\n'),
    "html-200": writes(json_answer(b"<html><body>hello</body></html>", content_type="text/html")),
    "json-garbage": writes(json_answer(b'{"choices": [{"message": ')),
    "gzip-raw": writes(lambda ex: json_answer(gzip.compress(own(ex)))),
    "gzip-encoded": writes(lambda ex: json_answer(gzip.compress(own(ex)), **{"content-encoding": "gzip"})),
    "choices-str": writes(lambda ex: json_answer(encode({**completion(echo_text(ex.request)), "choices": "x"}))),
    "no-choices": writes(json_answer(b'{"id": "chatcmpl-1", "object": "chat.completion", "model": "m"}')),
    "usage-str": writes(lambda ex: json_answer(encode(completion(echo_text(ex.request), usage="lots")))),
    "usage-bad-tokens": writes(
        lambda ex: json_answer(encode(completion(echo_text(ex.request), usage={"prompt_tokens": "x"})))
    ),
    "usage-list-tokens": writes(
        lambda ex: json_answer(encode(completion(echo_text(ex.request), usage={"completion_tokens": [1]})))
    ),
    "stream-array-mid": sse_of(sse_event(delta("a")), b"data: [1, 2]\n\n", sse_event(delta("b")), DONE_EVENT),
    "stream-text-mid": sse_of(sse_event(delta("a")), b"data: not json at all\n\n", DONE_EVENT),
    "stream-choices-mid": sse_of(sse_event(delta("a")), sse_event({**delta("b"), "choices": "x"}), DONE_EVENT),
    "stream-array-first": sse_of(b"data: [1, 2]\n\n", sse_event(delta("a")), DONE_EVENT),
    "stream-choices-first": sse_of(sse_event({**delta("a"), "choices": {"0": "x"}}), DONE_EVENT),
    "stream-usage-bad": sse_of(*(sse_event(d) for d in D), sse_event(usage_chunk({"prompt_tokens": "x"})), DONE_EVENT),
    **{name: framed(text) for name, text in FRAMINGS.items()},
    "drip-head": drip(b"", json_answer(b"{}")),
    "drip-body": drip(head(200, "OK", {"content-type": "application/json", "content-length": "200"}), b" " * 200),
    "drip-stream-start": drip(SSE_HEAD, chunked(sse_event(delta("never complete")))),
    "drip-stream-mid": drip(SSE_HEAD + chunked(sse_event(delta("first"))), chunked(sse_event(delta("second")))),
    "comments-forever": comments_forever(SSE_HEAD),
    "comments-after-event": comments_forever(SSE_HEAD + chunked(sse_event(delta("first")))),
    "eat": eat,
}


DESYNCING = ("interim-100", "interim-103", "overrun", "smuggle", "smuggle-chunked", "smuggle-late")
"""Faults that may put a connection out of step: served by a backend of their own (with ``dirty-echo``), so that a
transport that does go out of step fails their tests and not the others'."""


def policy(raw: RawBackend, dirty: RawBackend, mute: RawBackend, spare: RawBackend, down_port: int) -> str:
    lines = [
        "version: 1",
        "revision: conformance",
        "models:",
        f"  good: {{kind: base, backends: ['{spare.url}']}}",
        f"  echo: {{kind: base, backends: ['{raw.url}']}}",
        f"  dirty-echo: {{kind: base, backends: ['{dirty.url}']}}",
        f"  down: {{kind: base, backends: ['http://127.0.0.1:{down_port}']}}",
        f"  fb-down: {{kind: base, backends: ['http://127.0.0.1:{down_port}'], served_name: down}}",
    ]
    names = [*FAULTS, "closehead"]
    for name in names:
        url = mute.url if name == "closehead" else dirty.url if name in DESYNCING else raw.url
        lines.append(f"  {name}: {{kind: base, backends: ['{url}']}}")
        lines.append(f"  fb-{name}: {{kind: base, backends: ['{url}'], served_name: {name}}}")
    fallback_models = ", ".join(f"fb-{name}" for name in [*names, "down"])
    lines += [
        "cohorts:",
        f"  - {{name: with_fallback, match: {{model: [{fallback_models}]}}}}",
        "  - {name: alone, default: true}",
        "routes:",
        "  with_fallback: {target: echo, fallback: [good]}",
        "  alone: {target: echo}",
        "health:",
        "  interval_s: 3600",
        "  breaker: {consecutive_failures: 1000000, min_requests: 1000000, error_rate: 1.0}",
        f"  timeouts: {{connect_s: 1, first_byte_s: 1, total_s: {TOTAL_S}}}",
        "limits:",
        f"  max_answer_bytes: {MAX_ANSWER_BYTES}",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Env:
    stack: Stack
    client: httpx.Client  # one client for the whole module: building one costs ~0.1 s (its TLS context)
    raw: RawBackend
    dirty: RawBackend
    mute: RawBackend
    spare: RawBackend
    down_port: int

    def receipts(self, request_id: str) -> int:
        return sum(len(b.requests_with_id(request_id)) for b in (self.raw, self.dirty, self.mute, self.spare))

    def addresses(self) -> list[str]:
        ports = [self.raw.port, self.dirty.port, self.mute.port, self.spare.port, self.down_port]
        return [f"127.0.0.1:{port}" for port in ports] + [f":{port}" for port in ports]


_ids = itertools.count()


def new_id(tag: str) -> str:
    return f"{tag}-{os.getpid()}-{next(_ids)}"


def body(model: str, *, stream: bool = False, text: str = "hello") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8, "stream": stream}


def post(env: Env, model: str, request_id: str, *, stream: bool = False, text: str = "hello") -> httpx.Response:
    payload = body(model, stream=stream, text=text)
    return env.client.post("/v1/chat/completions", json=payload, headers={"x-request-id": request_id})


def content(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text[:500]
    return str(response.json()["choices"][0]["message"]["content"])


def sse_payloads(text: str) -> list[str]:
    """The ``data`` of each event the gateway sent (several ``data:`` lines joined by newlines)."""
    payloads = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            payloads.append("\n".join(data))
    return payloads


def stream_text(payloads: list[str]) -> str:
    chunks = [json.loads(p) for p in payloads if p != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def assert_error_shape(error: Any) -> None:
    assert isinstance(error, dict) and set(error) == {"error"}, error
    assert set(error["error"]) == {"message", "type", "param", "code"}, error
    assert isinstance(error["error"]["message"], str) and error["error"]["message"]


def assert_upstream_error(response: httpx.Response) -> dict[str, Any]:
    """A clean 502-class answer: status 502, 503 or 504 in OpenAI's error shape."""
    assert response.status_code in (502, 503, 504), (response.status_code, response.text[:500])
    parsed = response.json()
    assert_error_shape(parsed)
    return dict(parsed["error"])


def assert_fell_back(response: httpx.Response, first_model: str, request_id: str) -> None:
    assert response.status_code == 200, response.text[:500]
    assert response.headers["x-gateway-model"] == "good"
    assert response.headers.get("x-gateway-fallback") == f"error:{first_model}"
    if response.headers["content-type"].startswith("text/event-stream"):
        payloads = sse_payloads(response.text)
        assert payloads[-1] == "[DONE]" and stream_text(payloads) == echo_text_of(request_id)
    else:
        assert content(response) == echo_text_of(request_id)


def echo_text_of(request_id: str) -> str:
    return f"echo:{request_id}"


def assert_stream_error_end(response: httpx.Response) -> list[str]:
    """A stream that started (200) and then ended with one SSE error event, without ``[DONE]``."""
    assert response.status_code == 200, response.text[:500]
    payloads = sse_payloads(response.text)
    assert "[DONE]" not in payloads, payloads
    assert_error_shape(json.loads(payloads[-1]))
    return payloads
