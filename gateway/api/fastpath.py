"""GatewayApp: the ASGI entry point. The two proxy routes go straight to the pipeline; the rest through FastAPI.

FastAPI's routing, dependency solving and middleware layers, and then Starlette's request and response objects
(with a task group per stream), took about a quarter of the CPU per proxied request in py-spy profiles (one core,
upstream answering at once). The proxy routes need none of it: they are dispatched here by exact path and method,
read and answered in raw ASGI messages, with the same handler and error answers FastAPI would have used. Everything
else, lifespan included, is FastAPI's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

from fastapi import FastAPI
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.api.headers import gateway_headers
from gateway.api.openai_routes import ProxiedError, proxy
from gateway.api.validation import ClientDisconnected
from gateway.context import Endpoint
from gateway.runtime import Gateway
from gateway.wire import error_body

log = logging.getLogger("gateway")

PROXY_ROUTES: dict[str, Endpoint] = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


def proxied_error_response(exc: ProxiedError) -> Response:
    headers = {**gateway_headers(exc.ctx), **exc.error.headers()}
    return JSONResponse(exc.error.body(), status_code=exc.error.status, headers=headers)


def internal_error_response() -> Response:
    return JSONResponse(error_body("internal gateway error", "server_error", code="internal_error"), status_code=500)


class GatewayApp:
    def __init__(self, gateway: Gateway, app: FastAPI) -> None:
        self.gateway = gateway
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = PROXY_ROUTES.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            answer = await proxy(self.gateway, headers, receive, endpoint)
        except ProxiedError as exc:
            await proxied_error_response(exc)(scope, receive, send)
            return
        except ClientDisconnected:
            return
        except Exception:
            log.exception("unexpected error on POST %s", scope["path"])
            await internal_error_response()(scope, receive, send)
            return
        if answer.stream is None:
            assert answer.body is not None
            raw = _raw_headers(answer.headers, JSON)
            raw.append((b"content-length", b"%d" % len(answer.body)))
            try:
                await send({"type": "http.response.start", "status": 200, "headers": raw})
                await send({"type": "http.response.body", "body": answer.body})
            finally:
                # On the loop's next turn: answers that arrived together (a burst of requests whose backend
                # answered at once) all go out before any of their bookkeeping runs.
                asyncio.get_running_loop().call_soon(answer.done)
        else:
            await send_stream(answer.stream, _raw_headers(answer.headers, EVENT_STREAM), receive, send)


JSON = b"application/json"
EVENT_STREAM = b"text/event-stream; charset=utf-8"


def _raw_headers(headers: dict[str, str], content_type: bytes) -> list[tuple[bytes, bytes]]:
    raw = [(b"content-type", content_type)]
    raw += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    return raw


async def send_stream(
    stream: AsyncGenerator[bytes, None], headers: list[tuple[bytes, bytes]], receive: Receive, send: Send
) -> None:
    """Relay ``stream`` frame by frame; a client that disconnects cancels it at once, wherever it waits.

    uvicorn drops writes to a closed connection silently, so the disconnect is watched for on ``receive``.
    Closing the generator runs the relay's cleanup (upstream connection dropped, metrics recorded) here and now.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    headers.append((b"cache-control", b"no-cache"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    watcher = asyncio.ensure_future(watch())
    try:
        async for frame in stream:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
    finally:
        watcher.cancel()
        await stream.aclose()
