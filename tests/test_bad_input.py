"""Bad requests get OpenAI-shaped 4xx errors; nothing ever answers 500 or a stack trace."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import Stack


def post(stack: Stack, body: Any, path: str = "/v1/chat/completions", **kwargs: Any) -> httpx.Response:
    if isinstance(body, bytes | str):
        return httpx.post(stack.url + path, content=body, headers={"content-type": "application/json"}, **kwargs)
    return httpx.post(stack.url + path, json=body, **kwargs)


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    return dict(error)


MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[1, 2]", None),
        ({"messages": MSG}, "model"),
        ({"model": 5, "messages": MSG}, "model"),
        ({"model": "support-assistant"}, "messages"),
        ({"model": "support-assistant", "messages": []}, "messages"),
        ({"model": "support-assistant", "messages": "hi"}, "messages"),
        ({"model": "support-assistant", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "support-assistant", "messages": [1]}, "messages[0]"),
        ({"model": "support-assistant", "messages": MSG, "stream": "yes"}, "stream"),
        ({"model": "support-assistant", "messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"model": "support-assistant", "messages": MSG, "max_tokens": "10"}, "max_tokens"),
        ({"model": "support-assistant", "messages": MSG, "temperature": "hot"}, "temperature"),
        ({"model": "support-assistant", "messages": MSG, "metadata": [1]}, "metadata"),
        ({"model": "support-assistant", "messages": MSG, "response_format": "json"}, "response_format"),
    ],
)
def test_malformed_chat_bodies_are_400(stack: Stack, body: Any, param: str | None) -> None:
    error = assert_openai_error(post(stack, body), 400, param)
    assert error["type"] == "invalid_request_error"


def test_completions_without_prompt_is_400(stack: Stack) -> None:
    assert_openai_error(post(stack, {"model": "support-assistant"}, "/v1/completions"), 400, "prompt")


def test_unknown_model_is_404(stack: Stack) -> None:
    error = assert_openai_error(post(stack, {"model": "gpt-9", "messages": MSG}), 404, "model")
    assert error["code"] == "model_not_found"


def test_oversized_body_is_413(stack: Stack) -> None:
    big = {"model": "support-assistant", "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    assert_openai_error(post(stack, big), 413)


def test_unknown_path_and_wrong_method(stack: Stack) -> None:
    assert_openai_error(httpx.get(stack.url + "/v1/embeddingz"), 404)
    assert_openai_error(httpx.get(stack.url + "/v1/chat/completions"), 405)


def test_unreachable_backend_without_fallback_is_502_or_503(stack: Stack) -> None:
    assert stack.gateway is not None
    backend = stack.gateway.registry.pools["base"].backends[0]
    original = backend.url
    backend.url = "http://127.0.0.1:9"  # discard port: connection refused
    try:
        response = post(stack, {"model": "support-assistant", "messages": MSG})
    finally:
        backend.url = original
    error = assert_openai_error(response, 503)
    assert "cannot connect" in error["message"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=64),
        st.dictionaries(
            st.sampled_from(["model", "messages", "stream", "max_tokens", "tools", "metadata", "user", "n"]),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                max_leaves=8,
            ),
        ).map(lambda d: {**d, "model": d.get("model", "support-assistant")}),
    ),
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
)
def test_any_body_gets_2xx_or_4xx(rollout_stack: Stack, body: Any, path: str) -> None:
    response = post(rollout_stack, body, path, timeout=10)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["error"]["message"], str)
