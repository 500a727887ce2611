"""Property: a valid answer reaches the client intact however the backend's bytes are split on the wire.

TCP owes no one its segment boundaries: a status line, a header, a chunk-size line, an SSE event or a multi-byte
UTF-8 character may arrive in any number of pieces. The backend here writes a valid answer (framed by
``Content-Length``, chunked, or an SSE stream with any of the line endings the SSE format allows, comment lines,
in chunks that ignore event boundaries) in pieces cut at random points, with a pause after each, and the client
must get the same content. A ``\r\n`` cut between its two bytes is the classic trap of a line splitter.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.harness import Stack
from tests.rawbackend import (
    Exchange,
    RawBackend,
    chunked,
    completion,
    delta,
    encode,
    head,
    json_answer,
    usage_chunk,
)

POLICY = """
version: 1
models:
  split: {kind: base, backends: ["URL"]}
cohorts:
  - {name: all, default: true}
routes:
  all: {target: split}
health:
  interval_s: 3600
  timeouts: {connect_s: 1, first_byte_s: 2, total_s: 5}
"""


@dataclass
class Splitter:
    """A client of the gateway, and the pieces the gateway's backend writes for each request id."""

    client: httpx.Client
    plans: dict[str, list[bytes]]


@pytest.fixture(scope="module")
def splitter() -> Iterator[Splitter]:
    plans: dict[str, list[bytes]] = {}

    async def split_answer(ex: Exchange) -> None:
        await ex.send_pieces(plans.pop(ex.request.request_id), 0.001)

    with RawBackend({"split": split_answer}) as raw, Stack(POLICY.replace("URL", raw.url), {}) as stack:
        with httpx.Client(base_url=stack.url, timeout=10) as client:
            yield Splitter(client, plans)


@dataclass(frozen=True)
class Answer:
    kind: str
    texts: list[str]
    wire: bytes


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted({p % (len(data) + 1) for p in points}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)


def framed(body: bytes, content_type: str, chunk_cuts: list[int]) -> bytes:
    """``body`` as a chunked answer, its chunks cut at ``chunk_cuts``."""
    headers = {"content-type": content_type, "transfer-encoding": "chunked"}
    return head(200, "OK", headers) + b"".join(chunked(p) for p in cut(body, chunk_cuts)) + b"0\r\n\r\n"


def sse_body(texts: list[str], newline: bytes, comments: list[bool], multiline: bool) -> bytes:
    """A stream of ``texts`` as deltas, then usage and ``[DONE]``: a comment line before each event so marked, and
    with ``multiline`` each JSON event split over two ``data:`` lines (which SSE joins with a newline)."""
    events = [*(encode(delta(t)) for t in texts), encode(usage_chunk()), b"[DONE]"]
    if multiline:
        events = [e.replace(b'"choices": ', b'"choices":' + newline + b"data: ", 1) for e in events]
    return b"".join(
        (b": keep-alive" + newline if comment else b"") + b"data: " + event + newline + newline
        for event, comment in zip(events, comments, strict=True)
    )


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    kind = draw(st.sampled_from(["length", "chunked", "sse"]))
    texts = draw(st.lists(TEXT, min_size=1, max_size=5))
    chunk_cuts = draw(st.lists(st.integers(0, 10_000), max_size=6))
    if kind == "length":
        return Answer(kind, texts, json_answer(encode(completion("".join(texts)))))
    if kind == "chunked":
        return Answer(kind, texts, framed(encode(completion("".join(texts))), "application/json", chunk_cuts))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"])).encode()
    comments = draw(st.lists(st.booleans(), min_size=len(texts) + 2, max_size=len(texts) + 2))
    body = sse_body(texts, newline, comments, draw(st.booleans()))
    return Answer(kind, texts, framed(body, "text/event-stream", chunk_cuts))


CRLF_STREAM = Answer(
    "sse", ["a", "b"], framed(sse_body(["a", "b"], b"\r\n", [False] * 4, True), "text/event-stream", [])
)
BETWEEN_CR_AND_LF = CRLF_STREAM.wire.index(b'"choices":\r\n') + len(b'"choices":\r')
"""A cut between the two bytes of a ``\r\n`` that ends an event's first ``data:`` line: a decoder that takes the
``\r`` for a line end of its own and then the ``\n`` for another sees an empty line, and ends the event early."""


_ids = itertools.count()


@settings(max_examples=40, deadline=None)
@given(answer=answers(), wire_cuts=st.lists(st.integers(0, 100_000), max_size=12))
@example(answer=CRLF_STREAM, wire_cuts=[BETWEEN_CR_AND_LF])
def test_an_answer_split_anywhere_arrives_intact(splitter: Splitter, answer: Answer, wire_cuts: list[int]) -> None:
    request_id = f"split-{next(_ids)}"
    splitter.plans[request_id] = cut(answer.wire, wire_cuts)
    stream = answer.kind == "sse"
    body = {"model": "split", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    response = splitter.client.post("/v1/chat/completions", json=body, headers={"x-request-id": request_id})
    assert response.status_code == 200, response.text[:500]
    if not stream:
        assert response.json()["choices"][0]["message"]["content"] == "".join(answer.texts)
        return
    payloads = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]", payloads
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all("error" not in c for c in chunks), chunks
    got = "".join(c["choices"][0]["delta"]["content"] for c in chunks if c.get("choices"))
    assert got == "".join(answer.texts)


def test_the_splitter_cuts_without_losing_bytes() -> None:
    assert cut(b"0123456789", [3, 3, 0, 10, 25]) == [b"012", b"3456789"]
    assert cut(b"0123456789", [7, 2, 5]) == [b"01", b"234", b"56", b"789"]
