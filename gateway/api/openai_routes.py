"""OpenAI-compatible routes served through FastAPI: ``/v1/models``.

The proxied routes (``/v1/chat/completions``, ``/v1/completions``) never reach FastAPI: see
:mod:`gateway.api.fastpath`.
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.runtime import Gateway

router = APIRouter()


def lowered_headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


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
