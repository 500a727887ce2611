"""UpstreamClient: the gateway's HTTP/1.1 client for vLLM backends, on asyncio protocols and httptools.

The gateway needs a narrow slice of HTTP from its backends: a POST (or a small GET) with a known length, keep-alive
connections reused across requests, the status, and the body whole or as server-sent events as they arrive. A
general client pays for much more on every request: aiohttp's, the fastest of the general ones measured (about
10x httpx's throughput), still took about 28 % of the gateway's CPU per proxied request in a py-spy profile. This
one speaks exactly that slice with httptools, the C parser uvicorn uses, on one pool of keep-alive connections per
backend, and maps every failure to the :mod:`gateway.errors` taxonomy here and nowhere else.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from gateway.upstream.http1 import Connection, Origin

KEEPALIVE_S = 30.0
"""Idle connections older than this are not reused (vLLM's uvicorn closes them after 5 s; that race is retried)."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``first_byte_s`` bounds the wait for the answer's headers and then for each chunk of a stream."""

    connect_s: float
    first_byte_s: float


class UpstreamResponse:
    """An answer whose headers arrived; the body is read whole (``read``) or as SSE payloads (``events``)."""

    __slots__ = ("_client", "_conn", "_done", "_read_timeout_s", "_saw_done", "status", "url")

    def __init__(self, conn: Connection, client: UpstreamClient, url: str, read_timeout_s: float) -> None:
        self._conn = conn
        self._client = client
        self.url = url
        self.status = conn.status
        self._read_timeout_s = read_timeout_s
        self._done = False
        self._saw_done = False

    async def read(self) -> bytes:
        conn = self._conn
        try:
            while not conn.complete:
                await conn.wait_data(self._read_timeout_s)
            return conn.take_body()
        except UpstreamError as exc:
            exc.backend = self.url
            raise
        finally:
            self.close()

    async def events(self) -> AsyncIterator[bytes]:
        """The ``data:`` payloads of a server-sent-event stream, ``b"[DONE]"`` included."""
        conn = self._conn
        pending = b""
        try:
            while True:
                chunk = conn.take_body()
                if chunk:
                    pending += chunk
                    start = 0
                    end = pending.find(b"\n")
                    while end >= 0:
                        if pending.startswith(b"data:", start):
                            payload = pending[start + 5 : end].strip()
                            self._saw_done = payload == b"[DONE]"
                            yield payload
                        start = end + 1
                        end = pending.find(b"\n", start)
                    pending = pending[start:]
                elif conn.complete:
                    if pending.startswith(b"data:"):
                        yield pending[5:].strip()
                    return
                else:
                    await conn.wait_data(self._read_timeout_s)
        except UpstreamError as exc:
            exc.backend = self.url
            raise

    def close(self) -> None:
        """Done with the answer: a finished one frees its connection for reuse, an unfinished one drops it (for a
        stream still running, vLLM sees the disconnect and stops generating)."""
        if self._done:
            return
        self._done = True
        conn, client = self._conn, self._client
        if conn.complete and conn.keep_alive and not conn.closed:
            client._release(conn)
        elif self._saw_done and conn.keep_alive and not conn.closed:
            conn.finish_then(lambda: client._release(conn), lambda: client._discard(conn), grace_s=1.0)
        else:
            client._discard(conn)


class UpstreamClient:
    """One pool of keep-alive connections per backend origin, shared by every request."""

    def __init__(self, *, max_connections: int = 4096, max_idle_per_origin: int = 512) -> None:
        self._max_connections = max_connections
        self._max_idle = max_idle_per_origin
        self._idle: dict[Origin, list[Connection]] = {}
        self._open_connections: set[Connection] = set()
        self._origins: dict[str, tuple[Origin, str]] = {}
        self._open = 0
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._ssl: ssl.SSLContext | None = None
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def close(self) -> None:
        """Close every connection, in use or idle (an answer still being read fails as a closed connection)."""
        for conn in list(self._open_connections):
            self._discard(conn)
        self._idle.clear()
        self._started = False

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeouts: Timeouts) -> UpstreamResponse:
        return await self.request("POST", url, body, headers, timeouts)

    async def get(self, url: str, timeout_s: float) -> tuple[int, bytes]:
        """A small GET (health checks, ``/metrics`` scrapes): status and body, errors mapped."""
        try:
            async with asyncio.timeout(timeout_s):
                response = await self.request("GET", url, None, {}, Timeouts(timeout_s, timeout_s))
                return response.status, await response.read()
        except TimeoutError:
            err = UpstreamTimeout("timed out waiting for the backend")
            err.backend = url
            raise err from None

    async def request(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str], timeouts: Timeouts
    ) -> UpstreamResponse:
        if not self._started:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        origin, path = self._split(url)
        head = _head(method, path, origin, body, headers)
        for attempt in (1, 2):
            conn = await self._acquire(origin, timeouts.connect_s, url)
            reused = conn.requests > 0
            try:
                await conn.send(head, body, timeouts.first_byte_s)
            except UpstreamConnectError as exc:
                self._discard(conn)
                if reused and attempt == 1 and not conn.received:
                    continue  # a keep-alive connection the backend had just closed: the request never arrived
                exc.backend = url
                raise
            except BaseException as exc:
                self._discard(conn)
                if isinstance(exc, UpstreamError):
                    exc.backend = url
                raise
            return UpstreamResponse(conn, self, url, timeouts.first_byte_s)
        raise AssertionError("unreachable")

    def _split(self, url: str) -> tuple[Origin, str]:
        cached = self._origins.get(url)
        if cached is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                err = UpstreamConnectError(f"unsupported backend URL {url!r}")
                err.backend = url
                raise err
            tls = parts.scheme == "https"
            port = parts.port or (443 if tls else 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            cached = self._origins[url] = (Origin(parts.hostname, port, tls, parts.netloc), path)
            if len(self._origins) > 4096:
                self._origins.clear()
        return cached

    async def _acquire(self, origin: Origin, connect_s: float, url: str) -> Connection:
        idle = self._idle.get(origin)
        if idle:
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < KEEPALIVE_S:
                    return conn
                self._drop(conn)
        while self._open >= self._max_connections:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            await waiter
        self._open += 1
        try:
            return await self._connect(origin, connect_s)
        except BaseException:
            self._freed()
            raise

    async def _connect(self, origin: Origin, connect_s: float) -> Connection:
        loop = asyncio.get_running_loop()
        tls: Any = None
        if origin.tls:
            tls = self._ssl = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(connect_s):
                hostname = origin.host if tls else None
                _, conn = await loop.create_connection(
                    lambda: Connection(origin), origin.host, origin.port, ssl=tls, server_hostname=hostname
                )
        except TimeoutError:
            raise UpstreamTimeout("timed out connecting to the backend") from None
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect: {exc.strerror or exc}") from None
        self._open_connections.add(conn)
        return conn

    def _release(self, conn: Connection) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if conn.closed or len(idle) >= self._max_idle or not self._started:
            self._discard(conn)
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _discard(self, conn: Connection) -> None:
        conn.close()
        self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        if not conn.counted:
            return
        conn.counted = False
        conn.close()
        self._open_connections.discard(conn)
        self._freed()

    def _freed(self) -> None:
        self._open -= 1
        while self._slot_waiters:
            waiter = self._slot_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return


def _head(method: str, path: str, origin: Origin, body: bytes | None, headers: Mapping[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {origin.netloc}"]
    if body is not None:
        lines.append(f"content-length: {len(body)}")
    for name, value in headers.items():
        if "\n" in value or "\r" in value:
            raise UpstreamConnectError(f"header {name!r} has a line break")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1", "replace")
