"""GatewayApp: the ASGI entry point. The proxy routes go straight to the pipeline; everything else through FastAPI.

FastAPI's routing, dependency solving and middleware layers, and then Starlette's request and response objects
(with a task group per stream), took about a quarter of the CPU per proxied request in py-spy profiles (one core,
upstream answering at once). The proxy routes need none of it: they are dispatched here by exact path and method,
read and answered in raw ASGI messages, with the same error answers FastAPI's handlers give. Everything else,
lifespan included, is FastAPI's. This is the one HTTP entry path of a proxied request.

Once its body is read, a request is watched for the client's disconnect (uvicorn drops writes to a closed
connection silently, so ``receive`` is the only place to learn it): a client that goes away cancels its request
wherever it waits, and the backend request with it, streamed or not, at most ``WATCH_AFTER_S`` after it left.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, Mapping

from fastapi import FastAPI
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.api.headers import gateway_headers
from gateway.api.validation import REQUEST_ID, ClientDisconnected, parse_body, read_body
from gateway.context import RequestContext
from gateway.endpoints import PROXY_ROUTES
from gateway.errors import GatewayError
from gateway.pipeline import handle
from gateway.runtime import Gateway
from gateway.snapshot import PolicySnapshot
from gateway.wire import error_body

log = logging.getLogger("gateway")

JSON = b"application/json"
EVENT_STREAM = b"text/event-stream; charset=utf-8"
WATCH_AFTER_S = 0.2


def error_response(error: GatewayError, ctx: RequestContext | None = None) -> Response:
    headers = {**gateway_headers(ctx), **error.headers()} if ctx is not None else error.headers()
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def internal_error_response() -> Response:
    return JSONResponse(error_body("internal gateway error", "server_error", code="internal_error"), status_code=500)


def request_id_of(headers: Mapping[str, str]) -> str:
    sent = headers.get("x-request-id")
    return sent if sent is not None and REQUEST_ID.match(sent) else os.urandom(16).hex()


class DisconnectWatch:
    """Cancels the current task when the client disconnects; ``gone`` tells that cancellation from any other.

    The watch begins ``WATCH_AFTER_S`` into the request, not at once: most answers are out before then, and a
    timer is far cheaper than the task that waits on ``receive`` (about a tenth of the gateway's CPU per request
    when every request had one). A client gone earlier is seen as soon as the watch begins, since ``receive``
    then answers ``http.disconnect`` at once.
    """

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.gone = False
        self._receive = receive
        self._watcher: asyncio.Future[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._begin)

    def _begin(self) -> None:
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        self.task.cancel()

    def stop(self) -> None:
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


class GatewayApp:
    def __init__(self, gateway: Gateway, app: FastAPI) -> None:
        self.gateway = gateway
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = PROXY_ROUTES.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            message = f"method {scope['method']} is not allowed on {scope['path']}"
            body = error_body(message, "invalid_request_error", code="method_not_allowed")
            await JSONResponse(body, status_code=405, headers={"allow": "POST"})(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        ctx = RequestContext(request_id=request_id_of(headers), endpoint=endpoint, body={}, headers=headers)
        snapshot = self.gateway.snapshot  # read once: a reload mid-request does not change this request's policy
        limits = snapshot.policy.spec.limits
        try:
            raw = await read_body(
                receive, headers.get("content-length"), limits.max_body_bytes, timeout_s=limits.body_timeout_s
            )
            ctx.client_key = snapshot.keys.authenticate(headers)
            ctx.body = parse_body(raw, endpoint, limits.max_messages)
        except GatewayError as exc:
            await error_response(exc, ctx)(scope, receive, send)
            return
        except ClientDisconnected:
            return
        watch = DisconnectWatch(receive)
        try:
            await self._answer(ctx, snapshot, scope, receive, send)
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            watch.task.uncancel()
        finally:
            watch.stop()

    async def _answer(
        self, ctx: RequestContext, snapshot: PolicySnapshot, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            result = await handle(self.gateway, ctx, snapshot)
        except GatewayError as exc:
            await error_response(exc, ctx)(scope, receive, send)
            return
        except Exception:
            log.exception("unexpected error on POST %s", scope["path"])
            await internal_error_response()(scope, receive, send)
            return
        if result.stream is not None:
            await send_stream(result.stream, _raw_headers(gateway_headers(ctx), EVENT_STREAM), send)
            return
        assert result.body is not None
        raw = _raw_headers(gateway_headers(ctx), JSON)
        raw.append((b"content-length", b"%d" % len(result.body)))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": raw})
            await send({"type": "http.response.body", "body": result.body})
        finally:
            # On the loop's next turn: answers that arrived together (a burst of requests whose backend
            # answered at once) all go out before any of their bookkeeping runs.
            asyncio.get_running_loop().call_soon(result.done)


def _raw_headers(headers: dict[str, str], content_type: bytes) -> list[tuple[bytes, bytes]]:
    raw = [(b"content-type", content_type)]
    raw += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    return raw


async def send_stream(stream: AsyncGenerator[bytes, None], headers: list[tuple[bytes, bytes]], send: Send) -> None:
    """Relay ``stream`` frame by frame; closing the generator, however this ends, runs the relay's cleanup (the
    attempt ended, metrics recorded) here and now."""
    headers.append((b"cache-control", b"no-cache"))
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for frame in stream:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await stream.aclose()
