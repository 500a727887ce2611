"""Ops routes: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.runtime import Gateway

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    ready = gateway.ready
    body = {"status": "ready" if ready else "not ready", "policy_version": gateway.snapshot.version}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    gateway.metrics.observe_backends(gateway.registry.all_backends())
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)
