"""Client keys (401/403), per-key rate limits (429 + retry-after), backend keys, header allowlist, request limits."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.policy.schema import RateLimitSpec
from gateway.ratelimit import RateLimited, RateLimiter
from tests.harness import Stack

PARTNER_KEY = "sk-partner-123"
UNLIMITED_KEY = "sk-batch-456"
POLICY = f"""
version: 1
public_models: [assistant, internal]
models:
  merged-v1: {{kind: merged, sources: [source-a], backends: ["${{merged}}"], api_key: env:TEST_BACKEND_KEY}}
  source-a:  {{kind: source, backends: ["${{src}}"]}}
cohorts:
  - {{name: billing, match: {{content: "(?i)refund"}}}}
  - {{name: general, default: true}}
routes:
  billing: {{target: merged-v1, max_tokens: 64}}
  general: {{target: source-a}}
limits:
  max_messages: 3
  forward_headers: [x-tenant]
keys:
  frontend:
    key: env:TEST_FRONTEND_KEY
    models: [assistant]
    cohorts: [general]
    rate_limit: {{requests_per_min: 5}}
  partner:
    key: sha256:{hashlib.sha256(PARTNER_KEY.encode()).hexdigest()}
    rate_limit: {{tokens_per_min: 40}}
  ops:
    key: env:TEST_UNSET_KEY
  batch:
    key: sha256:{hashlib.sha256(UNLIMITED_KEY.encode()).hexdigest()}
"""
SIMS = {"merged": ["merged-v1"], "src": ["source-a"]}


@pytest.fixture(scope="module")
def keyed() -> Iterator[Stack]:
    os.environ["TEST_FRONTEND_KEY"] = "sk-frontend-abc"
    os.environ["TEST_BACKEND_KEY"] = "backend-secret"
    os.environ.pop("TEST_UNSET_KEY", None)
    try:
        with Stack(POLICY, SIMS) as stack:
            yield stack
    finally:
        os.environ.pop("TEST_FRONTEND_KEY", None)
        os.environ.pop("TEST_BACKEND_KEY", None)


def post(stack: Stack, key: str | None, text: str = "hi", **body: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    payload = {"model": "assistant", "messages": [{"role": "user", "content": text}], "max_tokens": 8, **body}
    return httpx.post(f"{stack.url}/v1/chat/completions", json=payload, headers=headers)


def test_missing_and_wrong_keys_are_401(keyed: Stack) -> None:
    for key in (None, "sk-wrong", ""):
        response = post(keyed, key)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{keyed.url}/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="nope", max_retries=0).models.list()


def test_env_key_with_unset_variable_never_matches(keyed: Stack) -> None:
    assert post(keyed, "").status_code == 401
    assert post(keyed, "None").status_code == 401


def test_allow_lists_give_403(keyed: Stack) -> None:
    frontend = "sk-frontend-abc"
    assert post(keyed, frontend).status_code == 200
    assert post(keyed, frontend, model="internal").status_code == 403
    denied = post(keyed, frontend, text="refund please")  # cohort billing is not allowed for this key
    assert denied.status_code == 403 and denied.json()["error"]["type"] == "permission_error"
    assert denied.headers["x-gateway-cohort"] == "billing"
    ids = [
        m["id"]
        for m in httpx.get(f"{keyed.url}/v1/models", headers={"authorization": f"Bearer {frontend}"}).json()["data"]
    ]
    assert ids == ["assistant"]
    assert post(keyed, PARTNER_KEY, text="refund please").status_code == 200
    assert post(keyed, None, model="internal").status_code == 401


def test_openai_client_with_a_key_and_api_key_header(keyed: Stack) -> None:
    client = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=PARTNER_KEY, max_retries=0)
    reply = client.chat.completions.create(model="internal", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert reply.model == "source-a"
    other = httpx.post(
        f"{keyed.url}/v1/chat/completions",
        json={"model": "internal", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
        headers={"api-key": PARTNER_KEY},
    )
    assert other.status_code == 200


def test_client_authorization_never_reaches_backends_but_backend_key_and_allowed_headers_do(keyed: Stack) -> None:
    response = httpx.post(
        f"{keyed.url}/v1/chat/completions",
        json={"model": "internal", "messages": [{"role": "user", "content": "a refund"}], "max_tokens": 2},
        headers={"authorization": f"Bearer {PARTNER_KEY}", "x-tenant": "acme", "x-secret": "do-not-forward"},
    )
    assert response.status_code == 200
    merged = keyed.stats("merged")["models"]["merged-v1"]["last_headers"]
    assert merged["authorization"] == "Bearer backend-secret"
    assert merged["x-tenant"] == "acme"
    assert "x-secret" not in merged
    httpx.post(
        f"{keyed.url}/v1/chat/completions",
        json={"model": "internal", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
        headers={"authorization": f"Bearer {PARTNER_KEY}"},
    )
    source = keyed.stats("src")["models"]["source-a"]["last_headers"]
    assert "authorization" not in source
    assert PARTNER_KEY not in str(source)


def test_request_limits(keyed: Stack) -> None:
    many = post(keyed, UNLIMITED_KEY, messages=[{"role": "user", "content": "x"}] * 4)
    assert many.status_code == 400 and many.json()["error"]["param"] == "messages"
    assert post(keyed, UNLIMITED_KEY, text="refund", max_tokens=64).status_code == 200
    greedy = post(keyed, UNLIMITED_KEY, text="refund", max_tokens=65)
    assert greedy.status_code == 400 and "route's limit of 64" in greedy.json()["error"]["message"]


def test_request_rate_limit_returns_429_with_retry_after() -> None:
    os.environ["TEST_FRONTEND_KEY"] = "sk-frontend-abc"
    os.environ["TEST_BACKEND_KEY"] = "backend-secret"
    try:
        with Stack(POLICY, SIMS) as stack:
            statuses = [post(stack, "sk-frontend-abc").status_code for _ in range(5)]
            assert statuses == [200] * 5
            limited = post(stack, "sk-frontend-abc")
            assert limited.status_code == 429
            assert limited.json()["error"]["code"] == "rate_limit_exceeded"
            assert 1 <= int(limited.headers["retry-after"]) <= 12
            assert post(stack, PARTNER_KEY).status_code == 200  # other keys are not affected
            with pytest.raises(openai.RateLimitError):
                openai.OpenAI(
                    base_url=f"{stack.url}/v1", api_key="sk-frontend-abc", max_retries=0
                ).chat.completions.create(model="assistant", messages=[{"role": "user", "content": "x"}])
            # token limit: 40 tokens per minute; each answer uses 8 completion + ~5 prompt tokens
            codes = [post(stack, PARTNER_KEY).status_code for _ in range(6)]
            assert 429 in codes and codes[0] == 200
    finally:
        os.environ.pop("TEST_FRONTEND_KEY", None)
        os.environ.pop("TEST_BACKEND_KEY", None)


def test_token_bucket_refills_with_the_clock() -> None:
    now = [0.0]
    limiter = RateLimiter(lambda: now[0])
    spec = RateLimitSpec(requests_per_min=2, tokens_per_min=100)
    limiter.admit("k", spec)
    limiter.admit("k", spec)
    with pytest.raises(RateLimited) as caught:
        limiter.admit("k", spec)
    assert 29 < caught.value.retry_after_s <= 30
    now[0] += 30
    limiter.admit("k", spec)
    limiter.charge_tokens("k", spec, 250)
    with pytest.raises(RateLimited) as tokens:
        limiter.admit("k", spec)
    assert "tokens per minute" in tokens.value.message
    now[0] += 60 * 1.6
    limiter.admit("k", spec)
