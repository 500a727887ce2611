"""OpenAI-compatible routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.api.headers import gateway_headers
from gateway.api.validation import REQUEST_ID, parse_body, read_body
from gateway.context import Endpoint, RequestContext
from gateway.errors import GatewayError
from gateway.pipeline import handle
from gateway.runtime import Gateway

router = APIRouter()


class ProxiedError(Exception):
    """A :class:`GatewayError` together with the context, so the error answer carries the gateway headers."""

    def __init__(self, error: GatewayError, ctx: RequestContext) -> None:
        self.error = error
        self.ctx = ctx


def request_id_of(request: Request) -> str:
    sent = request.headers.get("x-request-id")
    return sent if sent is not None and REQUEST_ID.match(sent) else uuid.uuid4().hex


async def _proxy(request: Request, endpoint: Endpoint) -> Response:
    gateway: Gateway = request.app.state.gateway
    ctx = RequestContext(
        request_id=request_id_of(request),
        endpoint=endpoint,
        body={},
        headers={k.lower(): v for k, v in request.headers.items()},
    )
    try:
        raw = await read_body(request, gateway.snapshot.policy.spec.limits.max_body_bytes)
        ctx.body = parse_body(raw, endpoint)
        result = await handle(gateway, ctx)
    except GatewayError as exc:
        raise ProxiedError(exc, ctx) from None
    headers = gateway_headers(ctx)
    if result.stream is not None:
        headers["cache-control"] = "no-cache"
        return StreamingResponse(result.stream, media_type="text/event-stream", headers=headers)
    return Response(result.body, media_type="application/json", headers=headers)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _proxy(request, "chat")


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _proxy(request, "completions")


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    spec = gateway.snapshot.policy.spec
    created = int(time.time())
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "llm-gateway", "kind": "public"}
        for name in spec.public_models
    ]
    data += [
        {"id": name, "object": "model", "created": created, "owned_by": "llm-gateway", "kind": model.kind}
        for name, model in spec.models.items()
    ]
    return JSONResponse({"object": "list", "data": data})
