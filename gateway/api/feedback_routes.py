"""``POST /v1/feedback``: a user's score of an earlier answer, counted as the ``user_feedback`` evaluator."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.validation import REQUEST_ID, parse_json_object, read_body
from gateway.errors import GatewayError, InvalidRequest
from gateway.runtime import Gateway

router = APIRouter()


def lowered_headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


@router.post("/v1/feedback")
async def feedback(request: Request) -> Response:
    """``{"request_id", "score"}`` with score in -1..1; a negative score fails the ``user_feedback`` evaluator."""
    gateway: Gateway = request.app.state.gateway
    gateway.snapshot.keys.authenticate(lowered_headers(request))
    body = parse_json_object(await read_body(request.receive, request.headers.get("content-length"), 64 * 1024))
    request_id, score = body.get("request_id"), body.get("score")
    if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
        raise InvalidRequest("'request_id' must be the x-request-id of an earlier answer", param="request_id")
    if not isinstance(score, int | float) or isinstance(score, bool) or not -1 <= score <= 1:
        raise InvalidRequest("'score' must be a number in -1..1", param="score")
    found = gateway.recorder.feedback_score(request_id, float(score))
    if found is None:
        raise UnknownRequest(f"no recent answer has request id '{request_id}'", param="request_id")
    model, cohort = found
    return JSONResponse({"request_id": request_id, "model": model, "cohort": cohort, "counted_as": _verdict(score)})


def _verdict(score: float) -> str:
    return "fail" if score < 0 else "pass"


class UnknownRequest(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "request_not_found"
