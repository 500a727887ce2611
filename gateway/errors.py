"""The gateway's error taxonomy, mapped to OpenAI's error shape at one boundary (the API layer).

GatewayError                      status  retryable (a fallback may follow)
├── InvalidRequest                400     no
├── AuthenticationFailed          401     no
├── PermissionDenied              403     no
├── ModelNotFound                 404     no
├── RequestTimeout                408     no    the client sent its body too slowly
├── PayloadTooLarge               413     no
├── UpstreamError                          (raised by the transport, one per failed attempt)
│   ├── UpstreamConnectError      502     yes   refused, DNS, TLS: the request never reached the backend
│   ├── UpstreamTimeout           504     yes   connect_s / first_byte_s / total_s
│   ├── UpstreamBusy              503     yes   every connection to the replica busy for pool_wait_s
│   ├── UpstreamDisconnected      502     no    closed or broke the answer once it had the request
│   ├── UpstreamBadAnswer         502     yes   not the JSON / event stream the endpoint answers with
│   ├── UpstreamAnswerTooLarge    502     yes   over limits.max_answer_bytes
│   ├── UpstreamStatus            as sent 5xx and 429 yes; other 4xx no (passed through)
│   └── NoBackendAvailable        503     yes   every replica unhealthy, open or drained
└── AttemptsExhausted             503/504 no    lists every attempt's error
"""

from __future__ import annotations

from typing import Any

from gateway.wire import error_body, is_openai_error, loads


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None
    retryable = False
    fallback_reason = "error"  # the x-gateway-fallback reason when this error moves a request on

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, param=self.param, code=self.code)

    def headers(self) -> dict[str, str]:
        """Extra response headers this error needs (``retry-after`` for 429)."""
        return {}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class RolloutConflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "rollout_conflict"


class StateUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "state_unavailable"


class PreviousResponseUnavailable(GatewayError):
    """The backend that holds the conversation is gone (removed from the policy, drained, or down)."""

    status = 409
    type = "invalid_request_error"
    code = "previous_response_unavailable"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist or you do not have access to it.", param="model")


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamError(GatewayError):
    """One failed attempt at one backend; ``backend`` is its URL, for logs and spans only (clients never see it).

    ``retryable``: the request may go to another backend. ``backend_fault``: the failure counts against the
    backend's circuit breaker (a 4xx the request caused does not). ``retry_after_s``: the backend asked for a pause.
    """

    retryable = True
    backend = ""
    retry_after_s: float | None = None

    @property
    def backend_fault(self) -> bool:
        return self.retryable

    def describe(self) -> str:
        return self.message


class UpstreamConnectError(UpstreamError):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"
    fallback_reason = "timeout"


class UpstreamBusy(UpstreamError):
    """The replica's ``max_connections`` were all in use for ``pool_wait_s``: the request never left."""

    status = 503
    type = "upstream_error"
    code = "upstream_busy"


class UpstreamDisconnected(UpstreamError):
    """The backend dropped the connection (or broke the answer's framing) after the request was sent: it may be
    generating already, so the POST is not sent again anywhere."""

    status = 502
    type = "upstream_error"
    code = "upstream_disconnected"
    retryable = False

    @property
    def backend_fault(self) -> bool:
        return True


class UpstreamBadAnswer(UpstreamError):
    status = 502
    type = "upstream_error"
    code = "upstream_bad_answer"


class UpstreamAnswerTooLarge(UpstreamError):
    status = 502
    type = "upstream_error"
    code = "upstream_answer_too_large"


class NoBackendAvailable(UpstreamError):
    status = 503
    type = "upstream_error"
    code = "no_backend_available"
    fallback_reason = "unhealthy"


class UpstreamStatus(UpstreamError):
    """A backend answered with an error status. 5xx and 429 may fall back; other 4xx belong to the request."""

    def __init__(self, status: int, raw: bytes, retry_after_s: float | None = None) -> None:
        self.status = status
        self.retry_after_s = retry_after_s
        self.raw = raw
        self.retryable = status >= 500 or status == 429
        try:
            parsed: Any = loads(raw)
        except ValueError:
            parsed = None
        self.passthrough = parsed if is_openai_error(parsed) else None
        detail = parsed["error"]["message"] if self.passthrough else raw[:200].decode("utf-8", "replace").strip()
        super().__init__(f"upstream answered {status}: {detail}")
        self.type = "upstream_error" if status >= 500 else "invalid_request_error"

    @property
    def backend_fault(self) -> bool:
        return self.status >= 500

    def body(self) -> dict[str, Any]:
        if self.passthrough is not None:
            return dict(self.passthrough)
        return error_body(self.message, self.type, code=self.status)

    def headers(self) -> dict[str, str]:
        return retry_after_header(self.retry_after_s)


class AttemptsExhausted(GatewayError):
    """Every planned attempt failed: the client learns what was tried and why."""

    type = "upstream_error"
    code = "all_attempts_failed"

    def __init__(self, attempts: list[tuple[str, str, UpstreamError]]) -> None:
        self.attempts = attempts
        timed_out = bool(attempts) and all(isinstance(err, UpstreamTimeout) for _, _, err in attempts)
        self.status = 504 if timed_out else 503
        self.retry_after_s = max((e.retry_after_s for _, _, e in attempts if e.retry_after_s), default=None)
        if attempts:
            tried = "; ".join(f"{model}: {err.describe()}" for model, _, err in attempts)
            message = f"no backend could answer ({len(attempts)} attempts): {tried}"
        else:
            message = "no model of this route is available right now"
        super().__init__(message)

    def headers(self) -> dict[str, str]:
        return retry_after_header(self.retry_after_s)


def retry_after_header(seconds: float | None) -> dict[str, str]:
    return {"retry-after": str(max(1, round(seconds)))} if seconds else {}
