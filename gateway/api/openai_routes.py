"""OpenAI-compatible routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass

from fastapi import APIRouter
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive

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


@dataclass
class ProxyAnswer:
    """A proxied request's answer for the HTTP layer: the gateway headers and a JSON body or a stream of frames."""

    headers: dict[str, str]
    body: bytes | None = None
    stream: AsyncGenerator[bytes, None] | None = None
    done: Callable[[], None] = lambda: None


def request_id_of(headers: Mapping[str, str]) -> str:
    sent = headers.get("x-request-id")
    return sent if sent is not None and REQUEST_ID.match(sent) else os.urandom(16).hex()


async def proxy(gateway: Gateway, headers: dict[str, str], receive: Receive, endpoint: Endpoint) -> ProxyAnswer:
    """Read, authenticate, parse and run the pipeline: the HTTP side of a proxied request, up to its answer.

    ``headers`` are the request's, names lower-cased. Errors the client must hear about come back as
    :class:`ProxiedError` (a client gone before its body arrived as ``ClientDisconnected``).
    """
    ctx = RequestContext(request_id=request_id_of(headers), endpoint=endpoint, body={}, headers=headers)
    snapshot = gateway.snapshot  # read once: a reload mid-request does not change this request's policy
    limits = snapshot.policy.spec.limits
    try:
        raw = await read_body(receive, headers.get("content-length"), limits.max_body_bytes)
        ctx.client_key = snapshot.keys.authenticate(headers)
        ctx.body = parse_body(raw, endpoint, limits.max_messages)
        result = await handle(gateway, ctx, snapshot)
    except GatewayError as exc:
        raise ProxiedError(exc, ctx) from None
    return ProxyAnswer(gateway_headers(ctx), result.body, result.stream, result.done)


def lowered_headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


def as_response(answer: ProxyAnswer) -> Response:
    if answer.stream is not None:
        headers = {**answer.headers, "cache-control": "no-cache"}
        return StreamingResponse(answer.stream, media_type="text/event-stream", headers=headers)
    return Response(
        answer.body, media_type="application/json", headers=answer.headers, background=BackgroundTask(answer.done)
    )


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """Served by :class:`gateway.api.fastpath.GatewayApp` before FastAPI; declared here for the OpenAPI schema."""
    return as_response(await proxy(request.app.state.gateway, lowered_headers(request), request.receive, "chat"))


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    """Served by :class:`gateway.api.fastpath.GatewayApp` before FastAPI; declared here for the OpenAPI schema."""
    gateway = request.app.state.gateway
    return as_response(await proxy(gateway, lowered_headers(request), request.receive, "completions"))


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    snapshot = gateway.snapshot
    key = snapshot.keys.authenticate(lowered_headers(request))
    spec = snapshot.policy.spec
    created = int(time.time())
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "llm-gateway", "kind": "public"}
        for name in spec.public_models
    ]
    data += [
        {"id": name, "object": "model", "created": created, "owned_by": "llm-gateway", "kind": model.kind}
        for name, model in spec.models.items()
    ]
    if key is not None and key.spec.models is not None:
        data = [m for m in data if m["id"] in key.spec.models]
    return JSONResponse({"object": "list", "data": data})
