"""Connection: one keep-alive HTTP/1.1 connection to a backend, an asyncio protocol around httptools' parser.

One request at a time (no pipelining). The parser's callbacks fill in the status and the body as it arrives; the
client awaits ``wait_data`` between them, each wait bounded by a timer, so no task or stream object is created per
request. A stream's body is buffered only up to :data:`READ_HIGH_WATER` before reading pauses, so a slow consumer
slows its backend rather than growing memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httptools

from gateway.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout

READ_HIGH_WATER = 1 << 20


@dataclass(frozen=True, slots=True)
class Origin:
    host: str
    port: int
    tls: bool
    netloc: str


class Connection(asyncio.Protocol):
    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.counted = True  # still counted in the client's open connections
        self.requests = 0
        self.idle_since = 0.0
        self._new_exchange()
        self._on_complete: Callable[[], None] | None = None

    def _new_exchange(self) -> None:
        self.status = 0
        self.keep_alive = False
        self.complete = False
        self.received = False
        self._headers_done = False
        self._framed = False
        self._body: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None

    async def send(self, head: bytes, body: bytes | None, timeout_s: float) -> None:
        """Write the request and wait for the answer's status line and headers."""
        self._new_exchange()
        self.requests += 1
        if self.closed or self.transport is None:
            raise UpstreamConnectError("the backend closed the connection")
        self.transport.write(head + body if body else head)
        while not self._headers_done:
            await self.wait_data(timeout_s)

    async def wait_data(self, timeout_s: float) -> None:
        """Wait until the parser has more to say (headers, body, the end) or fail after ``timeout_s`` of silence."""
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout_s, _time_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def take_body(self) -> bytes:
        """What arrived of the body since the last call."""
        body = self._body
        if not body:
            return b""
        data = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def finish_then(self, release: Callable[[], None], discard: Callable[[], None], grace_s: float) -> None:
        """The consumer is done, but the answer's last bytes are still due: reuse the connection if they arrive
        within ``grace_s``, else drop it."""
        timer = self._loop.call_later(grace_s, discard)

        def completed() -> None:
            timer.cancel()
            release()

        self._on_complete = completed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamConnectError(f"the backend sent a malformed answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete:
            return
        if self._headers_done and not self._framed and exc is None:
            self.keep_alive = False  # a body delimited by the end of the connection
            self.on_message_complete()
        else:
            self._fail(UpstreamConnectError("the backend closed the connection"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._framed:
            lowered = name.lower()
            self._framed = lowered == b"content-length" or lowered == b"transfer-encoding"

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()
        if self._on_complete is not None:
            callback, self._on_complete = self._on_complete, None
            callback()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        self._error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout("timed out waiting for the backend"))
