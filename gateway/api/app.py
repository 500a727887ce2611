"""create_app: the FastAPI application around one :class:`Gateway`, and the error boundary.

Every error leaves as OpenAI's ``{"error": {...}}`` shape with a 4xx/5xx status; nothing leaks a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api import admin_routes, feedback_routes, openai_routes, ops_routes
from gateway.api.fastpath import GatewayApp, internal_error_response
from gateway.api.validation import ClientDisconnected
from gateway.errors import GatewayError
from gateway.runtime import Gateway
from gateway.wire import error_body

log = logging.getLogger("gateway")


def create_app(gateway: Gateway, *, admin: bool = True) -> GatewayApp:
    """The gateway's ASGI app; ``admin=False`` leaves ``/admin/*`` out (see :func:`create_admin_app`)."""
    return GatewayApp(gateway, create_fastapi_app(gateway, admin=admin))


def create_fastapi_app(gateway: Gateway, *, admin: bool = True) -> FastAPI:

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    app = FastAPI(title="llm-gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gateway
    app.include_router(openai_routes.router)
    app.include_router(feedback_routes.router)
    app.include_router(ops_routes.router)
    if admin:
        app.include_router(admin_routes.router)
    _add_error_handlers(app)
    return app


def create_admin_app(gateway: Gateway) -> FastAPI:
    """Only ``/admin/*``, for a separate admin listener (``serve --admin-port``); the main app owns the lifespan."""
    app = FastAPI(title="llm-gateway admin", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gateway
    app.include_router(admin_routes.router)
    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(ClientDisconnected, _client_gone)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=400)  # nobody is left to read it; not an error of the gateway's


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        body = error_body(f"unknown path {request.url.path}", "invalid_request_error", code="not_found")
    elif exc.status_code == 405:
        body = error_body(
            f"method {request.method} is not allowed on {request.url.path}",
            "invalid_request_error",
            code="method_not_allowed",
        )
    else:
        body = error_body(str(exc.detail), "invalid_request_error", code=exc.status_code)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return internal_error_response()
