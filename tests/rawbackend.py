"""RawBackend: a scripted HTTP/1.1 backend on a raw socket, for testing the gateway's upstream transport.

A well-behaved server library cannot send what a broken or hostile backend sends (an interim ``1xx`` before the
answer, a body longer than its ``Content-Length``, a second answer nobody asked for, bytes dripped one at a time),
so this one writes bytes by hand. It runs on its own thread and event loop, so a stalled gateway cannot stall it,
and it keeps a record of every connection and of every request it received on it, in full.

What it does per request is a :data:`Script` chosen by the served model name in the JSON body (``scripts``), or
one script run as soon as the request's head arrived, before any of its body is read (``on_head``).
``GET .../health`` always answers 200. Wire builders (:func:`json_answer`, :func:`sse_answer`, ...) build the
answers the scripts write.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Received:
    """One request as the backend saw it; ``body`` is None when the script closed before reading it."""

    conn: int
    index: int
    method: str
    path: str
    headers: dict[str, str]
    head: bytes
    body: bytes | None = None

    @property
    def request_id(self) -> str:
        return self.headers.get("x-request-id", "")

    def json(self) -> Any:
        assert self.body is not None
        return json.loads(self.body)


@dataclass
class Conn:
    """One accepted connection; ``peer_closed`` once the gateway closed its end (EOF or reset seen)."""

    number: int
    requests: list[Received] = field(default_factory=list)
    peer_closed: bool = False
    closed: bool = False

    @property
    def open(self) -> bool:
        return not (self.peer_closed or self.closed)


class Exchange:
    """One request being answered: what a script reads and writes."""

    def __init__(
        self, request: Received, conn: Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.request = request
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.closed = False

    async def read_body(self) -> bytes:
        if self.request.body is None:
            self.request.body = await _read_body(self.reader, self.request.headers)
        return self.request.body

    def payload(self) -> dict[str, Any]:
        body = self.request.json()
        assert isinstance(body, dict)
        return body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_pieces(self, pieces: list[bytes], pause_s: float) -> None:
        """Write ``pieces`` one by one with ``pause_s`` between them; stop early if the gateway went away."""
        for piece in pieces:
            if self.gone():
                return
            await self.send(piece)
            await asyncio.sleep(pause_s)

    def gone(self) -> bool:
        """True once the gateway closed its end (noted on the connection) or this side was closed."""
        if self.reader.at_eof() or self.reader.exception() is not None:
            self.conn.peer_closed = True
        return self.conn.peer_closed or self.writer.is_closing()

    def close(self) -> None:
        self.closed = True
        self.writer.close()


Script = Callable[[Exchange], Awaitable[None]]


class RawBackend:
    """A backend at ``url`` answering each request with a script; use as a context manager."""

    def __init__(self, scripts: dict[str, Script] | None = None, *, on_head: Script | None = None) -> None:
        self.scripts: dict[str, Script] = dict(scripts or {})
        self.on_head = on_head
        self.conns: list[Conn] = []
        self.url = ""
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> RawBackend:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="raw-backend", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("raw backend did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready.set()
        await self._stop.wait()
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def received(self) -> list[Received]:
        return [request for conn in list(self.conns) for request in list(conn.requests)]

    def requests_with_id(self, request_id: str) -> list[Received]:
        return [r for r in self.received() if r.request_id == request_id]

    def open_conns(self) -> int:
        return sum(1 for conn in list(self.conns) if conn.open)

    def conn_of(self, request_id: str) -> Conn:
        """The connection that carried the (one) request with this id."""
        found = [c for c in list(self.conns) if any(r.request_id == request_id for r in c.requests)]
        assert len(found) == 1, f"{len(found)} connections carried {request_id}"
        return found[0]

    def wait_for(self, condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.01)
        return condition()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Conn(len(self.conns) + 1)
        self.conns.append(conn)
        try:
            await self._serve(conn, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            conn.peer_closed = True
        except asyncio.CancelledError:
            pass
        finally:
            conn.closed = True
            writer.close()
            self._tasks.discard(task)

    async def _serve(self, conn: Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                conn.peer_closed = True
                return
            request = _parse_head(head, conn.number, len(conn.requests) + 1)
            conn.requests.append(request)
            exchange = Exchange(request, conn, reader, writer)
            if request.path.endswith("/health"):
                await exchange.read_body()
                await exchange.send(json_answer(b'{"status": "ok"}'))
                continue
            script = self.on_head
            if script is None:
                await exchange.read_body()
                model = str(exchange.payload().get("model", ""))
                script = self.scripts.get(model, echo)
            await script(exchange)
            if exchange.closed:
                return


def _parse_head(head: bytes, conn: int, index: int) -> Received:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Received(conn, index, method, path, headers, head)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                return b"".join(p[:-2] for p in parts)
    return await reader.readexactly(int(headers.get("content-length", "0")))


# Wire builders


def completion(content: str, *, model: str = "backend-model", usage: Any = None) -> dict[str, Any]:
    """A chat completion as vLLM writes it."""
    return {
        "id": "chatcmpl-raw",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": usage if usage is not None else {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def delta(content: str, *, model: str = "backend-model") -> dict[str, Any]:
    """One chunk of a streamed chat completion."""
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": None}
    return {"id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [choice]}


def usage_chunk(usage: Any = None) -> dict[str, Any]:
    usage = usage if usage is not None else {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    return {"id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1, "choices": [], "usage": usage}


def encode(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def head(status: int = 200, reason: str = "OK", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_answer(body: bytes, *, status: int = 200, content_type: str = "application/json", **extra: str) -> bytes:
    """A whole answer framed by ``Content-Length``."""
    headers = {"content-type": content_type, "content-length": str(len(body)), **extra}
    return head(status, "OK" if status == 200 else "Whatever", headers) + body


def chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload) if payload else b""


def chunked_answer(parts: list[bytes], *, content_type: str = "application/json", **extra: str) -> bytes:
    """A whole answer in ``Transfer-Encoding: chunked``, one chunk per part, with its terminator."""
    headers = {"content-type": content_type, "transfer-encoding": "chunked", **extra}
    return head(200, "OK", headers) + b"".join(chunked(p) for p in parts) + b"0\r\n\r\n"


def sse_event(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else encode(obj)) + b"\n\n"


DONE_EVENT = b"data: [DONE]\n\n"


def sse_answer(events: list[bytes]) -> bytes:
    """A whole SSE answer as vLLM sends it: chunked, one chunk per event (already framed), then the terminator."""
    return chunked_answer(events, content_type="text/event-stream; charset=utf-8")


def echo_text(request: Received) -> str:
    """What :func:`echo` answers: the request's id, so a client can tell its own answer from another's."""
    return f"echo:{request.request_id}"


def echo_answer(exchange: Exchange) -> bytes:
    """The right answer for this request: JSON, or an SSE stream when the request asked for one."""
    text = echo_text(exchange.request)
    if exchange.payload().get("stream"):
        return sse_answer(
            [sse_event(delta(text[:5])), sse_event(delta(text[5:])), sse_event(usage_chunk()), DONE_EVENT]
        )
    return json_answer(encode(completion(text)))


async def echo(exchange: Exchange) -> None:
    """A healthy backend: the right answer, connection kept alive."""
    await exchange.send(echo_answer(exchange))
