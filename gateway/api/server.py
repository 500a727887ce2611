"""The gateway's HTTP listener: uvicorn's httptools server, plus the client limits uvicorn does not enforce.

uvicorn arms no timer on a connection that has sent nothing yet or is still sending its request headers, and its
``limit_concurrency`` counts idle sockets as load: a few hundred sockets that trickle header bytes (slowloris) or say
nothing would hold the gateway's file descriptors forever, or turn every real request into a 503. Here each connection
has one timer, for the phase it is in:

    phase     from                                      ends with
    idle      the connection opened, or its last        ``keepalive_s`` of silence: closed
              answer was sent
    headers   the first byte of the next request        ``header_timeout_s`` after that byte: 408, closed
    request   its headers are complete                  its answer (no timer here: the app bounds the body with
                                                        ``limits.body_timeout_s``, the backend call with the route's
                                                        timeouts)

and a :class:`ConnectionGuard` per listener keeps at most ``max_connections`` of them open: when a new one arrives
over the cap, the oldest connection with no request in progress (idle, or still sending its headers) is closed to
make room, so a flood of sockets cannot starve real requests. Only when every connection is in the middle of a
request does the newcomer's request get a 503 (``connection_limit``, ``retry-after: 1``, ``connection: close``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, Literal, Protocol

import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.wire import dumps, error_body

log = logging.getLogger("gateway")


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-listener limits on client connections (``llm-gateway serve`` flags of the same names)."""

    max_connections: int = 4096  # the overhead benchmark holds 2,000 streams through one gateway
    header_timeout_s: float = 10.0
    keepalive_s: float = 5.0


BACKLOG = 2048  # uvicorn's default, which it passes to listen() again when it starts serving


class ListenError(Exception):
    """A listening socket could not be bound (port in use, address not local, name not resolvable)."""


def listen(host: str, port: int) -> list[socket.socket]:
    """Bound sockets for ``host:port``, one per address the name resolves to (as ``loop.create_server`` would).

    Bound here, before anything starts, so that a port in use is one clear :class:`ListenError` rather than an
    error inside uvicorn after the app's start-up has run.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {where}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)  # now: a second bind to the same port (say --admin-port = --port) fails here
    except OSError as exc:
        for sock in sockets:
            sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise ListenError(f"cannot listen on {where}: {reason}") from None
    return sockets


def server_config(
    app: Any, limits: ConnectionLimits, *, log_level: str, lifespan: Literal["on", "off"]
) -> uvicorn.Config:
    """The uvicorn configuration of every gateway listener (``serve`` and the test harness alike)."""
    return uvicorn.Config(
        app,
        http=guarded_protocol(limits),
        ws="none",
        log_level=log_level,
        access_log=False,
        lifespan=lifespan,
        proxy_headers=False,  # nothing reads the client address; the middleware cost ~3 % of CPU per request
    )


class Evictable(Protocol):
    def evict(self) -> None:
        """Close the connection now (it has no request in progress)."""


class ConnectionGuard:
    """At most ``max_connections`` open connections on one listener, with room kept for new ones.

    A connection over the cap closes the oldest connection that has no request in progress: a flood of sockets is
    made of those, and a real client whose kept-alive connection is closed opens another. When all others are in
    the middle of a request, the newcomer stays (one at most: the next newcomer evicts it) and, unless room has been
    made by the time its headers are complete, its request is refused.
    """

    WARN_EVERY_S = 60.0

    def __init__(self, max_connections: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_connections = max_connections
        self._open: set[Evictable] = set()
        self._waiting: dict[Evictable, None] = {}  # no request in progress, oldest first
        self._clock = clock
        self._warned_at = float("-inf")

    def opened(self, connection: Evictable) -> None:
        self._open.add(connection)
        self._waiting[connection] = None
        self._make_room(connection)

    def request_started(self, connection: Evictable) -> bool:
        """Whether the request whose headers ``connection`` has just completed may run (else: refuse it)."""
        self._waiting.pop(connection, None)
        self._make_room(connection)
        return len(self._open) <= self.max_connections

    def request_finished(self, connection: Evictable) -> None:
        if connection in self._open:
            self._waiting[connection] = None

    def closed(self, connection: Evictable) -> None:
        self._open.discard(connection)
        self._waiting.pop(connection, None)

    def _make_room(self, newcomer: Evictable) -> None:
        while len(self._open) > self.max_connections:
            oldest = next((c for c in self._waiting if c is not newcomer), None)
            if oldest is None:
                self._warn_full()
                return
            self.closed(oldest)
            oldest.evict()

    def _warn_full(self) -> None:
        """Under a flood this happens for every new connection: one line a minute is enough to see it."""
        now = self._clock()
        if now - self._warned_at >= self.WARN_EVERY_S:
            self._warned_at = now
            log.warning("all %d client connections are busy with requests; refusing new ones", self.max_connections)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the phase timers and the guard of the module docstring.

    Subclassed per listener by :func:`guarded_protocol`, which sets the class attributes.
    """

    limits: ClassVar[ConnectionLimits]
    guard: ClassVar[ConnectionGuard]
    header_timeout_answer: ClassVar[bytes]
    refusal: ClassVar[Refusal]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: Literal["idle", "headers", "request"] = "idle"
        self._timer: asyncio.TimerHandle | None = None
        self._admitted = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.guard.opened(self)
        self._enter_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.guard.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == "idle":
            self._phase = "headers"
            self._arm(self.limits.header_timeout_s, self._headers_too_slow)
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._phase = "request"
        self._cancel_timer()
        if self.guard.request_started(self):
            self._admitted = True
        elif not self._admitted:
            self.app = self.refusal
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        self._unset_keepalive_if_required()  # uvicorn's own keep-alive timer; the idle phase's replaces it
        if not pipelined and not self.transport.is_closing():
            self.guard.request_finished(self)
            self._enter_idle()

    def _unsupported_upgrade_warning(self) -> None:
        """No route of the gateway upgrades (``ws="none"``): the request is answered as plain HTTP, and a client
        must not be able to write two warnings to the log per request."""
        log.debug("ignored an upgrade request")

    def evict(self) -> None:
        self._cancel_timer()
        self.transport.close()

    def _enter_idle(self) -> None:
        self._phase = "idle"
        self._arm(self.limits.keepalive_s, self.evict)

    def _headers_too_slow(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.write(self.header_timeout_answer)
            self.transport.close()

    def _arm(self, delay_s: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay_s, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for one listener: its own :class:`ConnectionGuard`, shared by its connections."""
    limit_error = error_body(
        f"the gateway has {limits.max_connections} connections busy with requests; retry shortly",
        "server_error",
        code="connection_limit",
    )
    timeout_error = error_body(
        f"the request headers did not arrive within {limits.header_timeout_s:g}s",
        "invalid_request_error",
        code="request_timeout",
    )

    class ListenerProtocol(GuardedHttpToolsProtocol):
        pass

    ListenerProtocol.limits = limits
    ListenerProtocol.guard = ConnectionGuard(limits.max_connections)
    ListenerProtocol.header_timeout_answer = raw_answer(408, dumps(timeout_error))
    ListenerProtocol.refusal = Refusal(dumps(limit_error))
    return ListenerProtocol


def raw_answer(status: int, body: bytes) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, written to a transport outside any ASGI cycle."""
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status, HTTPStatus(status).phrase.encode(), len(body)) + body


class Refusal:
    """The ASGI app that answers a request over the connection cap: 503, and the connection closes after it."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"retry-after", b"1"),
            (b"connection", b"close"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})
