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

from gateway.api.validation import parse_json_object, read_body
from gateway.errors import AuthenticationFailed, GatewayError, InvalidRequest
from gateway.routing.cohorts import CohortClassifier
from gateway.routing.explain import explain_async
from gateway.runtime import Gateway


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
    """The body as a JSON object, read within the policy's size and time limits like any other request."""
    limits = request.app.state.gateway.snapshot.policy.spec.limits
    declared = request.headers.get("content-length")
    raw = await read_body(request.receive, declared, limits.max_body_bytes, timeout_s=limits.body_timeout_s)
    return parse_json_object(raw)


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


def _known(gateway: Gateway, model: Any, cohort: Any, where: str) -> tuple[str, str]:
    spec = gateway.snapshot.policy.spec
    if not isinstance(model, str) or model not in spec.models:
        raise InvalidRequest(f"{where}: unknown model {model!r}", param="model")
    if not isinstance(cohort, str) or cohort not in {c.name for c in spec.cohorts}:
        raise InvalidRequest(f"{where}: unknown cohort {cohort!r}", param="cohort")
    return model, cohort


@router.post("/evals")
async def push_evals(request: Request) -> Response:
    """Offline eval results: ``{"results": [{"model", "cohort", "evaluator", "passed": N, "failed": N}]}``."""
    gateway: Gateway = request.app.state.gateway
    body = await json_body(request)
    results = body.get("results")
    if not isinstance(results, list) or not results:
        raise InvalidRequest("'results' must be a non-empty array", param="results")
    batches = []
    for i, item in enumerate(results):
        where = f"results[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        model, cohort = _known(gateway, item.get("model"), item.get("cohort"), where)
        evaluator = item.get("evaluator")
        if not isinstance(evaluator, str) or not evaluator:
            raise InvalidRequest(f"{where}.evaluator must be a non-empty string", param=f"{where}.evaluator")
        counts = [item.get("passed", 0), item.get("failed", 0)]
        if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 1_000_000 for n in counts):
            raise InvalidRequest(f"{where}: passed and failed must be integers in 0..1000000", param=where)
        batches.append((model, cohort, evaluator, counts[0], counts[1]))
    for model, cohort, evaluator, passed, failed in batches:  # all validated first: a bad item changes nothing
        gateway.recorder.push(model, cohort, evaluator, passed, failed)
    shared = await gateway.fleet.flush()
    return JSONResponse({"accepted": len(batches), "shared": shared, "gates": gateway.recorder.gates.snapshot()})


@router.post("/gates/{model}/{cohort}")
async def set_gate(request: Request, model: str, cohort: str) -> Response:
    gateway: Gateway = request.app.state.gateway
    _known(gateway, model, cohort, "gate")
    body = await json_body(request)
    action = body.get("action")
    if action == "trip":
        state = gateway.recorder.gates.trip(model, cohort)
    elif action == "reset":
        state = gateway.recorder.gates.reset(model, cohort)
    else:
        raise InvalidRequest("'action' must be 'trip' or 'reset'", param="action")
    shared = await gateway.fleet.flush()  # False: Redis is down; the action holds here and is sent when it returns
    body = {"model": model, "cohort": cohort, "tripped": state.tripped, "reason": state.reason, "shared": shared}
    return JSONResponse(body)


@router.get("/policy")
async def get_policy(request: Request) -> Response:
    """The policy in force (version, file, parsed content) and the outcome of the last reload, errors included."""
    gateway: Gateway = request.app.state.gateway
    policy = gateway.snapshot.policy
    last = gateway.reloader.last
    return JSONResponse(
        {
            "version": policy.version,
            "revision": policy.spec.revision,
            "digest": policy.digest,
            "path": policy.path,
            "last_reload": last.as_json() if last else None,
            "policy": policy.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
    )


class PolicyRejected(GatewayError):
    status = 422
    type = "invalid_request_error"
    code = "policy_rejected"


@router.post("/policy/reload")
async def reload_policy(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    result = await gateway.reloader.reload("admin")
    if result.outcome == "rejected":
        raise PolicyRejected(
            "the policy file was rejected; the previous policy stays in force:\n" + "\n".join(result.errors)
        )
    return JSONResponse(result.as_json())


@router.post("/explain")
async def explain_request(request: Request) -> Response:
    """A request body in; the live routing decision out (current gate, health and breaker states, and each
    rollout's current weight and state, included), with each semantic rule's nearest examples through the
    gateway's embedder. Explaining is not traffic: its fall-throughs are not counted."""
    gateway: Gateway = request.app.state.gateway
    body = await json_body(request)
    snapshot = gateway.snapshot
    headers = {
        k.lower(): v for k, v in request.headers.items() if k.lower().startswith("x-") and k.lower() != "x-request-id"
    }
    request_id = request.headers.get("x-request-id", "explain")
    classifier = snapshot.classifier
    if classifier.has_semantic:  # the same rules and examples, without the fall-through counter
        classifier = CohortClassifier(snapshot.policy.spec, snapshot.semantic)
    result = await explain_async(
        snapshot.policy.spec,
        classifier,
        snapshot.planner,
        body,
        embedder=gateway.embedder,
        headers=headers,
        request_id=request_id,
        skip=gateway.model_filter,
        rollouts=gateway.rollouts.weight,
        rollout_states=gateway.rollouts.states,
    )
    result["policy_version"] = snapshot.version
    result["gates"] = [g for g in gateway.recorder.gates.snapshot() if g["cohort"] == result["cohort"]]
    result["backends"] = [
        b.snapshot()
        for b in gateway.registry.all_backends()
        if b.model in {a["model"] for a in result["attempts"]} | {s["model"] for s in result["skipped"]}
    ]
    return JSONResponse(result)


@router.get("/rollouts")
async def list_rollouts(request: Request) -> Response:
    """Every route's rollout: state, step, the candidate's weight, and the evidence of the current step."""
    gateway: Gateway = request.app.state.gateway
    return JSONResponse({"rollouts": gateway.rollouts.snapshot()})


@router.post("/rollouts/{route}")
async def act_on_rollout(request: Request, route: str) -> Response:
    """``{"action": "pause" | "resume" | "abort" | "promote"}``; 409 when the rollout's state does not allow it."""
    gateway: Gateway = request.app.state.gateway
    body = await json_body(request)
    action = body.get("action")
    if not isinstance(action, str):
        raise InvalidRequest("'action' must be pause, resume, abort or promote", param="action")
    await gateway.rollouts.act(route, action)
    found = next(r for r in gateway.rollouts.snapshot() if r["route"] == route)
    return JSONResponse(found)
