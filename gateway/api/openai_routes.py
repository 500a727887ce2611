"""OpenAI-compatible routes served through FastAPI: ``/v1/models`` and ``/v1/models/{id}``.

The proxied routes (``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``, ``/v1/embeddings``) never
reach FastAPI: see :mod:`gateway.api.fastpath`.
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import ModelNotFound
from gateway.runtime import Gateway

router = APIRouter()


def lowered_headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


def visible_models(gateway: Gateway, request: Request) -> list[dict[str, object]]:
    """Public names, then the registry; with keys, only the models the client's key may use."""
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
    return data


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": visible_models(request.app.state.gateway, request)})


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> Response:
    """One model, as ``client.models.retrieve`` expects it; 404 ``model_not_found`` for a name the client may not
    see (unknown, or not in its key's allow-list)."""
    found = next((m for m in visible_models(request.app.state.gateway, request) if m["id"] == model_id), None)
    if found is None:
        raise ModelNotFound(model_id)
    return JSONResponse(found)
