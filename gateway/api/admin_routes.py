"""Admin routes, behind ``Authorization: Bearer $GATEWAY_ADMIN_TOKEN`` (compared in constant time).

Without the variable the admin API is off (404), so a development gateway never exposes it by accident.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import AuthenticationFailed, GatewayError, InvalidRequest
from gateway.runtime import Gateway
from gateway.wire import loads


class AdminDisabled(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


def require_admin(request: Request) -> None:
    token = os.environ.get("GATEWAY_ADMIN_TOKEN", "")
    if not token:
        raise AdminDisabled("the admin API is disabled (set GATEWAY_ADMIN_TOKEN to enable it)")
    sent = request.headers.get("authorization", "")
    scheme, _, credential = sent.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), token.encode()):
        raise AuthenticationFailed("admin endpoints need 'Authorization: Bearer <GATEWAY_ADMIN_TOKEN>'")


router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = loads(await request.body())
    except ValueError:
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


@router.get("/state")
async def state(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    return JSONResponse(gateway.state())


@router.post("/backends/{model}/{index}")
async def drain_backend(request: Request, model: str, index: int) -> Response:
    gateway: Gateway = request.app.state.gateway
    body = await json_body(request)
    action = body.get("action")
    if action not in ("drain", "restore"):
        raise InvalidRequest("'action' must be 'drain' or 'restore'", param="action")
    pool = gateway.registry.pools.get(model)
    if pool is None or not 0 <= index < len(pool.backends):
        raise InvalidRequest(f"no backend {model}[{index}]", param="index")
    backend = pool.backends[index]
    backend.drained = action == "drain"
    if action == "restore":
        backend.breaker.reset()
    return JSONResponse(backend.snapshot())
