"""FakeUpstream: a scripted OpenAI-compatible backend on a loopback port that records exactly what reached it.

The simulator plays a well-behaved vLLM and reports the gateway's traffic in aggregate. Tests of the upstream
transport need a backend that misbehaves on cue (holds a request, answers 429 with ``Retry-After``, insists on a
key or a client certificate) and that shows what arrived on the wire: each request's headers, on which TCP
connection, and with which client certificate. It runs in its own thread and event loop, so it is up before the
gateway's policy (which names its URL) is written, and a slow answer here never stalls the gateway's loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CHAT_PATH = "/v1/chat/completions"


@dataclass
class Script:
    """How the backend answers ``POST /v1/chat/completions`` (``GET /health`` always answers 200)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)  # extra headers on every answer, e.g. retry-after
    hold_s: float = 0.0  # seconds to sit on a request before answering
    content: str = '{"answer": "ok"}'
    require_key: str | None = None  # the exact Authorization value wanted; anything else gets 401


@dataclass(frozen=True)
class Seen:
    """One request as the backend received it; ``peer_port`` tells connections apart."""

    method: str
    path: str
    headers: dict[str, str]
    peer_port: int
    at: float  # time.monotonic() on arrival
    body: dict[str, Any]
    client_cert_cn: str | None


class FakeUpstream:
    def __init__(self, script: Script | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.script = script or Script()
        self.seen: list[Seen] = []
        self._ssl = ssl_context
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fake-upstream-{self.port}", daemon=True)

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def reset(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.seen.clear()

    def posts(self) -> list[Seen]:
        return [s for s in list(self.seen) if s.path == CHAT_PATH]

    def health_checks(self) -> int:
        return sum(1 for s in list(self.seen) if s.path == "/health")

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_post(CHAT_PATH, self._chat)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        self._sock.listen(128)
        await web.SockSite(runner, self._sock, ssl_context=self._ssl).start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def _record(self, request: web.Request, body: dict[str, Any]) -> None:
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        cert = transport.get_extra_info("peercert") if transport is not None else None
        cn = None
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    cn = value
        headers = {k.lower(): v for k, v in request.headers.items()}
        port = int(peer[1]) if peer else 0
        self.seen.append(Seen(request.method, request.path, headers, port, time.monotonic(), body, cn))

    async def _health(self, request: web.Request) -> web.Response:
        self._record(request, {})
        return web.json_response({"status": "ok"})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = {}
        self._record(request, body if isinstance(body, dict) else {})
        script = self.script
        if script.require_key is not None and request.headers.get("authorization") != script.require_key:
            return _error(401, "invalid backend key", {})
        if script.hold_s:
            await asyncio.sleep(script.hold_s)
        if script.status != 200:
            return _error(script.status, f"scripted {script.status}", script.headers)
        model = str(body.get("model", "fake"))
        if body.get("stream"):
            return await _stream(request, model, script)
        return web.json_response(_completion(model, script.content), headers=script.headers)


def _error(status: int, message: str, headers: dict[str, str]) -> web.Response:
    error = {"error": {"message": message, "type": "fake_error", "param": None, "code": status}}
    return web.json_response(error, status=status, headers=headers)


def _completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


async def _stream(request: web.Request, model: str, script: Script) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream", **script.headers})
    await response.prepare(request)
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": script.content}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
    ]
    for chunk in chunks:
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response
