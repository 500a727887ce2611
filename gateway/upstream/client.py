"""UpstreamClient: the gateway's HTTP client for vLLM backends, on aiohttp's client.

A proxy's core job is moving HTTP correctly: interim ``1xx`` answers, bodies that overrun their length, chunked
framing, compression, TLS and pooling are what a maintained client library has met and fixed for a decade, so
this module only narrows aiohttp's client to what the gateway needs (a POST, or a small GET, then the status and
the body whole or as server-sent events) and maps every library failure onto :mod:`gateway.errors`, here and
nowhere else::

    aiohttp                                   gateway.errors            may go to another backend
    ClientConnectorError (refused, DNS, TLS)  UpstreamConnectError      yes: the request never left
    ConnectionTimeoutError                    UpstreamTimeout           yes: the request never left
    (all max_connections busy, pool_wait_s)   UpstreamBusy              yes: the request never left
    ServerTimeoutError, TimeoutError          UpstreamTimeout           yes (first_byte_s / total_s)
    "Can not write request body"              UpstreamConnectError      yes: the backend did not read it all
    ServerDisconnectedError, other errors     UpstreamDisconnected      no: it may have the request already

Connections are pooled in one aiohttp session per TLS setting; a replica has at most ``max_connections`` requests
in flight (each holds a slot until its answer is closed), and a request waits at most ``pool_wait_s`` for a slot.
A connection is reused only after an answer whose body was read to its clean end; an answer abandoned midway, or
with bytes after its end, closes its connection.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from gateway.errors import (
    UpstreamAnswerTooLarge,
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.policy.schema import TlsSpec
from gateway.upstream.connector import StrictConnector, ssl_context
from gateway.upstream.sse import SseDecoder

KEEPALIVE_S = 4.0
"""Idle connections are closed after this, just under the 5 s after which vLLM's uvicorn closes them itself: a POST
is never sent on a connection the backend is about to drop (aiohttp, rightly, does not resend a POST)."""

LARGE_BODY_BYTES = 1 << 20
"""Bodies over this go to aiohttp as a file-like object (it warns about large ``bytes``, which it would copy)."""

DRAIN_S = 1.0
"""After a stream's ``[DONE]``, how long the end of its framing may take before the connection is dropped instead
of being reused."""


@dataclass(frozen=True)
class ConnectionSettings:
    """How connections to a replica are made and pooled (from its model's policy entry)."""

    tls: TlsSpec | None = None
    max_connections: int = 4096


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``first_byte_s`` bounds the wait for the answer's headers and then for each chunk; ``total_s`` is a
    hard deadline for the whole exchange, body included; ``pool_wait_s`` the wait for a free pooled connection."""

    connect_s: float
    first_byte_s: float
    total_s: float | None = None
    pool_wait_s: float = 1.0

    def for_aiohttp(self) -> aiohttp.ClientTimeout:
        # The wait for a free connection is the client's own (``pool_wait_s``); aiohttp's pool never waits, as it
        # allows as many connections as there are slots.
        return aiohttp.ClientTimeout(
            total=self.total_s, connect=self.connect_s, sock_connect=self.connect_s, sock_read=self.first_byte_s
        )


DEFAULT_SETTINGS = ConnectionSettings()


class UpstreamResponse:
    """An answer whose headers arrived; its body is read whole (:meth:`read`) or as SSE payloads (:meth:`events`).

    :meth:`close` must be called once the caller is done (it is idempotent): it frees the connection for reuse
    when the body was read to its end, and drops it otherwise.
    """

    __slots__ = ("_client", "_closed", "_response", "_saw_done", "_slot", "status", "url")

    def __init__(
        self, response: aiohttp.ClientResponse, client: UpstreamClient, url: str, slot: asyncio.Semaphore
    ) -> None:
        self._response = response
        self._client = client
        self._slot = slot
        self.url = url
        self.status = response.status
        self._closed = False
        self._saw_done = False

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._response.headers

    async def read(self, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes (decoded if the backend compressed it)."""
        response = self._response
        try:
            declared = response.content_length
            if declared is not None and declared > limit and not response.headers.get("content-encoding"):
                raise UpstreamAnswerTooLarge(f"the backend's answer is {declared} bytes; the limit is {limit}")
            chunks: list[bytes] = []
            size = 0
            while True:
                chunk = await response.content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise UpstreamAnswerTooLarge(f"the backend's answer is over the limit of {limit} bytes")
                chunks.append(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except BaseException as exc:
            raise self._client.translate(exc, self.url, sent=True) from None
        finally:
            self.close()

    async def events(self, max_event_bytes: int) -> AsyncIterator[bytes]:
        """The data of each server-sent event (``b"[DONE]"`` included), as the events complete."""
        decoder = SseDecoder(max_event_bytes)
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    for data in decoder.end():
                        yield data
                    return
                for data in decoder.feed(chunk):
                    if data == b"[DONE]":
                        self._saw_done = True
                    yield data
        except UpstreamError:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise self._client.translate(exc, self.url, sent=True) from None

    def close(self) -> None:
        """Done with the answer: a finished one frees its connection, an unfinished one drops it (for a stream
        still running, vLLM sees the disconnect and stops generating)."""
        if self._closed:
            return
        self._closed = True
        response = self._response
        if response.content.at_eof() or response.connection is None:
            response.release()
            self._slot.release()
        elif self._saw_done:
            self._client.drain(response, self._slot)
        else:
            response.close()
            self._slot.release()


class UpstreamClient:
    """One aiohttp session (and connection pool) per connection setting, shared by every request."""

    def __init__(self) -> None:
        self._sessions: dict[ConnectionSettings, aiohttp.ClientSession] = {}
        self._urls: dict[str, URL] = {}
        self._drains: dict[asyncio.Task[None], aiohttp.ClientResponse] = {}
        self._slots: dict[tuple[ConnectionSettings, str | None, int | None], asyncio.Semaphore] = {}
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def close(self) -> None:
        """Close every connection, in use or idle (an answer still being read fails as a closed connection)."""
        self._started = False
        for task, response in list(self._drains.items()):
            task.cancel()
            response.close()
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        settings: ConnectionSettings = DEFAULT_SETTINGS,
    ) -> UpstreamResponse:
        return await self._request("POST", url, body, headers, timeouts, settings)

    async def get(
        self,
        url: str,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
        settings: ConnectionSettings = DEFAULT_SETTINGS,
        limit: int = 4 * 1024 * 1024,
    ) -> tuple[int, bytes]:
        """A small GET (health checks, ``/metrics`` scrapes): status and body, errors mapped."""
        timeouts = Timeouts(timeout_s, timeout_s, total_s=timeout_s, pool_wait_s=timeout_s)
        response = await self._request("GET", url, None, headers or {}, timeouts, settings)
        return response.status, await response.read(limit)

    async def _request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        settings: ConnectionSettings,
    ) -> UpstreamResponse:
        if not self._started:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        target = self._url(url)
        slot = await self._slot(settings, target, timeouts.pool_wait_s, url)
        try:
            session = self._sessions.get(settings) or self._session(settings)
            data = io.BytesIO(body) if body is not None and len(body) > LARGE_BODY_BYTES else body
            response = await session.request(method, target, data=data, headers=headers, timeout=timeouts.for_aiohttp())
        except BaseException as exc:
            slot.release()
            raise self.translate(exc, url, sent=False) from None
        return UpstreamResponse(response, self, url, slot)

    async def _slot(self, settings: ConnectionSettings, target: URL, wait_s: float, url: str) -> asyncio.Semaphore:
        """A slot among the replica's ``max_connections``, waiting at most ``wait_s`` for one."""
        key = (settings, target.host, target.port)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = asyncio.Semaphore(settings.max_connections)
        if not slot.locked():
            await slot.acquire()  # returns at once
            return slot
        try:
            async with asyncio.timeout(wait_s):
                await slot.acquire()
        except TimeoutError:
            error = UpstreamBusy(
                f"all {settings.max_connections} connections to the backend stayed busy for {wait_s:g}s"
            )
            error.backend = url
            raise error from None
        return slot

    def translate(self, exc: BaseException, url: str, *, sent: bool) -> BaseException:
        """The gateway error for a library failure; ``sent``: the request was certainly written (an answer had
        begun). Anything not from the library (a cancellation, say) is returned as it is, to be re-raised."""
        error: UpstreamError
        if isinstance(exc, UpstreamError):
            error = exc
        elif isinstance(exc, aiohttp.ConnectionTimeoutError):
            error = UpstreamTimeout("timed out connecting to the backend or waiting for a free connection to it")
        elif isinstance(exc, TimeoutError):
            error = UpstreamTimeout("timed out waiting for the backend")
        elif isinstance(exc, aiohttp.ClientConnectorError):
            error = UpstreamConnectError(f"cannot connect to the backend: {_reason(exc)}")
        elif isinstance(exc, aiohttp.ClientOSError) and not sent and "write request body" in str(exc):
            error = UpstreamConnectError("the backend closed the connection before it read the whole request")
        elif isinstance(exc, aiohttp.ClientPayloadError):
            error = UpstreamDisconnected("the backend's answer was cut short (or its framing was broken)")
        elif isinstance(exc, aiohttp.ClientResponseError):
            error = UpstreamDisconnected(f"the backend sent a malformed answer: {exc.message}")
        elif isinstance(exc, aiohttp.ClientError | ValueError):
            error = UpstreamDisconnected(f"the backend closed the connection: {type(exc).__name__}")
        else:
            return exc
        error.backend = error.backend or url
        return error

    def drain(self, response: aiohttp.ClientResponse, slot: asyncio.Semaphore) -> None:
        """Read the last framing bytes of a stream that sent ``[DONE]`` in the background, so its connection is
        reused; any data there (bytes after the answer's end) or a slow end drops the connection instead."""
        task = asyncio.get_running_loop().create_task(_drain(response))
        self._drains[task] = response

        def drained(done: asyncio.Task[None]) -> None:
            self._drains.pop(done)
            slot.release()

        task.add_done_callback(drained)

    def _session(self, settings: ConnectionSettings) -> aiohttp.ClientSession:
        connector = StrictConnector(
            limit=0,
            limit_per_host=settings.max_connections,
            keepalive_timeout=KEEPALIVE_S,
            ssl=ssl_context(settings.tls),
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(),
            auto_decompress=True,
            cookie_jar=aiohttp.DummyCookieJar(),  # a backend's Set-Cookie must never reach other clients' requests
            skip_auto_headers=("User-Agent",),
            headers={"accept-encoding": "identity"},
        )
        self._sessions[settings] = session
        return session

    def _url(self, url: str) -> URL:
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = URL(url)
            if parsed.scheme not in ("http", "https") or not parsed.host:
                error = UpstreamConnectError("the backend's URL is not http(s)://host")
                error.backend = url
                raise error
            if len(self._urls) > 4096:
                self._urls.clear()
            self._urls[url] = parsed
        return parsed


async def _drain(response: aiohttp.ClientResponse) -> None:
    try:
        async with asyncio.timeout(DRAIN_S):
            while True:
                data = await response.content.readany()
                if data:
                    response.close()
                    return
                if response.content.at_eof():
                    response.release()
                    return
    except (TimeoutError, aiohttp.ClientError):
        response.close()
    except asyncio.CancelledError:
        response.close()
        raise


def _reason(exc: aiohttp.ClientConnectorError) -> str:
    """Why a connection failed, without the backend's address (that goes to logs and spans, not to clients)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "its TLS certificate was not accepted"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    inner = exc.os_error
    return (inner.strerror or type(inner).__name__).lower() if inner is not None else "connection failed"
