"""End to end through real sockets: the openai client → gateway → simulated vLLM backends."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import openai
import pytest

from tests.harness import Stack

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "refund_order",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}},
                "required": ["order_id"],
            },
        },
    }
]


def client(stack: Stack, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="test", max_retries=0, **kwargs)


def ask(stack: Stack, text: str = "hello", **kwargs: Any) -> Any:
    return client(stack).chat.completions.with_raw_response.create(
        model="support-assistant", messages=[{"role": "user", "content": text}], max_tokens=8, **kwargs
    )


def test_non_stream_chat_routes_by_content_and_sets_headers(stack: Stack) -> None:
    raw = ask(stack, "I need a refund for order 12")
    completion = raw.parse()
    assert raw.headers["x-gateway-cohort"] == "billing_refund"
    assert raw.headers["x-gateway-route"] == "billing_refund"
    assert raw.headers["x-gateway-model"] == "merged-v1"
    assert raw.headers["x-gateway-policy-version"].startswith("test/")
    assert "x-gateway-fallback" not in raw.headers
    assert float(raw.headers["x-gateway-overhead-ms"]) >= 0
    assert len(raw.headers["x-request-id"]) >= 16
    assert completion.model == "merged-v1"
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    served = stack.requests_to("merged_a", "merged-v1") + stack.requests_to("merged_b", "merged-v1")
    assert served == 1


def test_request_id_is_honored_and_echoed(stack: Stack) -> None:
    raw = ask(stack, extra_headers={"x-request-id": "req-abc.123:x"})
    assert raw.headers["x-request-id"] == "req-abc.123:x"
    bad = ask(stack, extra_headers={"x-request-id": "has spaces and /slashes"})
    assert bad.headers["x-request-id"] != "has spaces and /slashes"


@pytest.mark.parametrize(
    ("kwargs", "headers", "cohort", "model", "sim"),
    [
        ({}, {"x-topic": "billing"}, "billing_refund", "merged-v1", None),
        ({"extra_body": {"metadata": {"queue": "policy"}}}, {}, "policy_exception", "policy-specialist", "policy"),
        ({"user": "vip-1"}, {}, "vip", "billing-specialist", "billing"),
        ({"response_format": {"type": "json_object"}}, {}, "structured", "policy-specialist", "policy"),
        ({}, {"x-lang": "fr"}, "not_english", "policy-specialist", "policy"),
        ({}, {}, "out_of_domain", "base", "base"),
    ],
)
def test_cohort_routing_end_to_end(
    stack: Stack, kwargs: dict[str, Any], headers: dict[str, str], cohort: str, model: str, sim: str | None
) -> None:
    raw = ask(stack, extra_headers=headers, **kwargs)
    assert raw.headers["x-gateway-cohort"] == cohort
    assert raw.headers["x-gateway-model"] == model
    assert raw.parse().model == model
    if sim is not None:
        served = "qwen2.5-7b-instruct" if model == "base" else model
        assert stack.requests_to(sim, served) == 1


def test_long_prompt_and_registry_model_by_name(stack: Stack) -> None:
    assert ask(stack, "word " * 500).headers["x-gateway-cohort"] == "long_prompt"
    raw = client(stack).chat.completions.with_raw_response.create(
        model="merged-v1", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert raw.headers["x-gateway-cohort"] == "direct_merged"
    assert raw.headers["x-gateway-model"] == "merged-v1"


def test_gateway_only_fields_are_not_forwarded_and_served_name_is_used(stack: Stack) -> None:
    ask(stack, extra_body={"metadata": {"queue": "sales"}})
    last = stack.stats("base")["models"]["qwen2.5-7b-instruct"]["last_headers"]
    assert "authorization" not in last
    assert stack.requests_to("base", "qwen2.5-7b-instruct") == 1


def test_split_ratio_and_sticky_users(stack: Stack) -> None:
    c = client(stack)
    models: Counter[str] = Counter()
    per_user: dict[str, set[str]] = {}
    for i in range(200):
        user = f"user-{i % 100}"
        raw = c.chat.completions.with_raw_response.create(
            model="support-assistant",
            messages=[{"role": "user", "content": "call it"}],
            tools=TOOLS,
            user=user,
            max_tokens=8,
        )
        assert raw.headers["x-gateway-cohort"] == "tool_required"
        models[raw.headers["x-gateway-model"]] += 1
        per_user.setdefault(user, set()).add(raw.headers["x-gateway-model"])
    assert all(len(arms) == 1 for arms in per_user.values())
    merged_users = sum(1 for arms in per_user.values() if "merged-v1" in arms)
    assert 2 <= merged_users <= 22, models  # 10 % of 100 users, binomial 3.3 sigma
    assert models["merged-v1"] + models["billing-specialist"] == 200


def test_stream_relays_chunks_and_strips_unrequested_usage(stack: Stack) -> None:
    c = client(stack)
    chunks = list(
        c.chat.completions.create(
            model="support-assistant",
            messages=[{"role": "user", "content": "refund"}],
            max_tokens=6,
            stream=True,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.model == "merged-v1" for ch in chunks)
    assert all(ch.usage is None for ch in chunks)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    with_usage = list(
        c.chat.completions.create(
            model="support-assistant",
            messages=[{"role": "user", "content": "refund"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].choices == []
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens == 6


def test_stream_headers_and_done(stack: Stack) -> None:
    body = {
        "model": "support-assistant",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": True,
    }
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-gateway-model"] == "base"
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(p["model"] == "base" for p in payloads)


async def test_async_client_stream_and_non_stream(stack: Stack) -> None:
    async with openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="t", max_retries=0) as c:
        completion = await c.chat.completions.create(
            model="support-assistant", messages=[{"role": "user", "content": "refund"}], max_tokens=5
        )
        assert completion.model == "merged-v1"
        stream = await c.chat.completions.create(
            model="support-assistant",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 5
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text


def test_completions_endpoint(stack: Stack) -> None:
    c = client(stack)
    raw = c.completions.with_raw_response.create(model="support-assistant", prompt="refund my order", max_tokens=5)
    completion = raw.parse()
    assert raw.headers["x-gateway-cohort"] == "billing_refund"
    assert completion.model == "merged-v1"
    assert completion.object == "text_completion"
    assert completion.choices[0].text
    chunks = list(c.completions.create(model="support-assistant", prompt="hi", max_tokens=3, stream=True))
    assert chunks and all(ch.model == "base" for ch in chunks)


def test_models_list(stack: Stack) -> None:
    ids = [m.id for m in client(stack).models.list().data]
    assert ids[0] == "support-assistant"
    assert {"base", "billing-specialist", "policy-specialist", "merged-v1"} <= set(ids)


def test_error_falls_back_to_next_model(stack: Stack) -> None:
    stack.configure("merged_a", {"set": {"error_rate": 1.0, "error_status": 500}})
    stack.configure("merged_b", {"set": {"error_rate": 1.0, "error_status": 503}})
    raw = ask(stack, "refund")
    assert raw.headers["x-gateway-model"] == "billing-specialist"
    assert raw.headers["x-gateway-fallback"] == "error:merged-v1"
    assert raw.parse().model == "billing-specialist"
    assert stack.stats("merged_a")["models"]["merged-v1"]["errors"] == 1
    assert stack.stats("merged_b")["models"]["merged-v1"]["errors"] == 1
    metrics = httpx.get(f"{stack.url}/metrics").text
    assert 'llm_gateway_fallbacks_total{cohort="billing_refund",from_model="merged-v1",reason="error"} 1.0' in metrics


def test_one_bad_replica_is_retried_on_the_other(stack: Stack) -> None:
    stack.configure("merged_a", {"set": {"rate_limit_rate": 1.0}})
    for _ in range(6):
        raw = ask(stack, "refund")
        assert raw.headers["x-gateway-model"] == "merged-v1"
        assert "x-gateway-fallback" not in raw.headers
    assert stack.requests_to("merged_b", "merged-v1") == 6


def test_upstream_4xx_is_passed_through_unchanged(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(stack, "word " * 5000)
    assert caught.value.status_code == 400
    error = caught.value.body
    assert isinstance(error, dict) and error.get("param") == "input_tokens"
    assert stack.stats("billing")["models"]["billing-specialist"]["rejected"] == 1  # the long_prompt cohort


def test_too_long_prompt_moves_to_the_model_with_a_larger_context(stack: Stack) -> None:
    stack.configure("billing", {"model": "billing-specialist", "set": {"max_model_len": 8192}})
    raw = ask(stack, "refund " * 5000)
    assert raw.headers["x-gateway-model"] == "billing-specialist"
    assert raw.headers["x-gateway-fallback"] == "context_window:merged-v1"
    stack.configure("billing", {"reset_profile": True})
    with pytest.raises(openai.BadRequestError):
        ask(stack, "refund " * 5000)  # no model of the chain has room: vLLM's 400 reaches the client
    assert stack.stats("billing")["models"]["billing-specialist"]["rejected"] == 1
    assert stack.stats("base")["models"]["qwen2.5-7b-instruct"]["rejected"] == 0


def test_every_attempt_failing_gives_503_listing_attempts(stack: Stack) -> None:
    for name in ("merged_a", "merged_b", "billing", "base"):
        stack.configure(name, {"set": {"error_rate": 1.0}})
    response = httpx.post(
        f"{stack.url}/v1/chat/completions",
        json={"model": "support-assistant", "messages": [{"role": "user", "content": "refund"}]},
    )
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "all_attempts_failed"
    for model in ("merged-v1", "billing-specialist", "base"):
        assert model in error["message"]
    assert response.headers["x-gateway-cohort"] == "billing_refund"


def test_client_disconnect_cancels_upstream_stream(stack: Stack) -> None:
    stack.configure("base", {"set": {"per_token_s": 0.05, "output_tokens": 200}})
    body = {"model": "support-assistant", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=10) as response:
        for i, _ in enumerate(response.iter_lines()):
            if i > 4:
                break
    assert stack.wait_for(lambda: stack.stats("base")["models"]["qwen2.5-7b-instruct"]["cancelled"] == 1)
    assert stack.stats("base")["models"]["qwen2.5-7b-instruct"]["completed"] == 0
