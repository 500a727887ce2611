"""The simulator's error taxonomy, answered in vLLM's shape.

vLLM answers every error as ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status equal to
``code`` and ``type`` named after the status (``BadRequestError``, ``NotFoundError``, ...). Unknown paths are the
exception: FastAPI answers them with ``{"detail": "Not Found"}``.
"""

from __future__ import annotations

from typing import Any

from gateway.wire import error_body

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "TimeoutError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    501: "NotImplementedError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def error_type(status: int) -> str:
    """vLLM's error ``type`` for an HTTP status."""
    return _TYPES.get(status, "BadRequestError" if status < 500 else "InternalServerError")


class SimError(Exception):
    """An error answer: HTTP ``status`` plus OpenAI's message/param."""

    def __init__(self, status: int, message: str, param: str | None = None, type_: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_ or error_type(status)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, param=self.param, code=self.status)


def bad_request(message: str, param: str | None = None) -> SimError:
    return SimError(400, message, param)


def model_not_found(model: str) -> SimError:
    return SimError(404, f"The model `{model}` does not exist.", "model")


def response_not_found(response_id: str) -> SimError:
    """vLLM's answer for an unknown ``previous_response_id`` or ``GET /v1/responses/{id}``."""
    return SimError(404, f"Response with id '{response_id}' not found.", "response_id", "invalid_request_error")


def unsupported(model: str, api: str) -> SimError:
    """A model asked for an API its kind does not serve (a chat request to an embedding model, or the reverse)."""
    return SimError(400, f"The model `{model}` does not support {api} API")


def injected(status: int) -> SimError:
    """An error the profile injected (``error_rate``, ``rate_limit_rate``)."""
    if status == 429:
        return SimError(429, "Rate limit exceeded (simulated). Please retry later.")
    return SimError(status, f"Simulated failure (status {status}).")
