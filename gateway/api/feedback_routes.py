"""``POST /v1/feedback``: a user's score of an earlier answer, counted as the ``user_feedback`` evaluator.

With ``keys`` in the policy, feedback is authenticated and rate-limited like any other request, and a key scores
only requests it made itself (another key's request id is answered exactly like an unknown one). With fleet state
in Redis, a request answered by any instance can be scored through any instance, once.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.validation import REQUEST_ID, parse_json_object, read_body
from gateway.errors import InvalidRequest
from gateway.runtime import Gateway

router = APIRouter()

MAX_FEEDBACK_BYTES = 64 * 1024


def lowered_headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


@router.post("/v1/feedback")
async def feedback(request: Request) -> Response:
    """``{"request_id", "score"}`` with score in -1..1; a negative score fails the ``user_feedback`` evaluator.

    404 ``request_not_found`` when this key has no recent answer with that id; 409 ``feedback_already_recorded``
    for a second score of the same id (the first one stands).
    """
    gateway: Gateway = request.app.state.gateway
    key = gateway.snapshot.keys.authenticate(lowered_headers(request))
    if key is not None:
        gateway.limiter.admit(key.name, key.spec.rate_limit)
    raw = await read_body(request.receive, request.headers.get("content-length"), MAX_FEEDBACK_BYTES)
    body = parse_json_object(raw)
    request_id, score = body.get("request_id"), body.get("score")
    if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
        raise InvalidRequest("'request_id' must be the x-request-id of an earlier answer", param="request_id")
    if not isinstance(score, int | float) or isinstance(score, bool) or not -1 <= score <= 1:
        raise InvalidRequest("'score' must be a number in -1..1", param="score")
    answered = await gateway.fleet.claim_feedback(request_id, key.name if key is not None else None)
    gateway.recorder.feedback_score(answered, float(score))
    return JSONResponse(
        {"request_id": request_id, "model": answered.model, "cohort": answered.cohort, "counted_as": _verdict(score)}
    )


def _verdict(score: float) -> str:
    return "fail" if score < 0 else "pass"
