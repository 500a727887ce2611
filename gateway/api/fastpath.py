"""GatewayApp: the ASGI entry point. The two proxy routes go straight to the pipeline; the rest through FastAPI.

FastAPI's routing, dependency solving and middleware layers took about a fifth of the CPU per proxied request in a
profile (py-spy, one core, upstream answering at once). The proxy routes need none of it, so they are dispatched
here by exact path and method and answered with the same handler and error boundary FastAPI would have used.
Everything else, lifespan included, is FastAPI's.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.api.headers import gateway_headers
from gateway.api.openai_routes import ProxiedError, proxy
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
        try:
            response = await proxy(self.gateway, Request(scope, receive), endpoint)
        except ProxiedError as exc:
            response = proxied_error_response(exc)
        except Exception:
            log.exception("unexpected error on POST %s", scope["path"])
            response = internal_error_response()
        await response(scope, receive, send)
