"""Eval gates end to end: a merged model failing one cohort is taken off that cohort only, and comes back."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import Stack

POLICY = """
version: 1
public_models: [assistant]
models:
  merged-v1: {kind: merged, sources: [source-a], backends: ["${merged}"]}
  source-a:  {kind: source, backends: ["${src}"]}
cohorts:
  - {name: structured, match: {response_format: json_object}}
  - {name: tools, match: {has_tools: true}}
  - {name: chat, default: true}
routes:
  structured: {target: merged-v1, fallback: sources}
  tools:      {target: merged-v1, fallback: sources}
  chat:       {target: merged-v1, fallback: sources}
evals:
  window: {size: 40, min_samples: 20}
  cohorts:
    chat: {evaluators: [no_refusal]}
  gates:
    - models: [merged-v1]
      cohorts: [structured, tools]
      evaluators: [json_valid, tool_call_valid]
      max_fail_rate: 0.2
      min_samples: 20
      probe_sample: 1.0
    - models: [merged-v1]
      cohorts: [chat]
      evaluators: [user_feedback, no_refusal]
      max_fail_rate: 0.3
      min_samples: 10
      mode: ${chat_mode}
"""
SIMS = {"merged": ["merged-v1"], "src": ["source-a"]}
TOKEN = "eval-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
        },
    }
]


def make_stack(chat_mode: str = "enforce") -> Stack:
    return Stack(POLICY.replace("${chat_mode}", chat_mode), SIMS)


@pytest.fixture
def stack() -> Iterator[Stack]:
    os.environ["GATEWAY_ADMIN_TOKEN"] = TOKEN
    try:
        with make_stack() as stack:
            yield stack
    finally:
        del os.environ["GATEWAY_ADMIN_TOKEN"]


def chat(stack: Stack, **body: Any) -> httpx.Response:
    payload = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30, **body}
    response = httpx.post(f"{stack.url}/v1/chat/completions", json=payload, timeout=10)
    assert response.status_code == 200, response.text
    return response


def gate(stack: Stack, model: str, cohort: str) -> dict[str, Any]:
    state = httpx.get(f"{stack.url}/admin/state", headers=AUTH).json()
    return next(g for g in state["evals"]["gates"] if g["model"] == model and g["cohort"] == cohort)


def structured(stack: Stack) -> httpx.Response:
    return chat(stack, response_format={"type": "json_object"})


def test_invalid_json_trips_the_gate_for_that_cohort_only_and_it_recovers(stack: Stack) -> None:
    stack.configure("merged", {"set": {"invalid_json_rate": 1.0}})
    for _ in range(20):
        assert structured(stack).headers["x-gateway-model"] == "merged-v1"
    assert stack.wait_for(lambda: gate(stack, "merged-v1", "structured")["tripped"])
    assert "json_valid fail rate 1.000" in gate(stack, "merged-v1", "structured")["reason"]
    rerouted = structured(stack)
    assert rerouted.headers["x-gateway-model"] == "source-a"
    assert rerouted.headers["x-gateway-fallback"] == "eval:merged-v1"
    assert chat(stack).headers["x-gateway-model"] == "merged-v1"  # other cohorts keep the model
    assert chat(stack, tools=TOOLS).headers["x-gateway-model"] == "merged-v1"
    assert not gate(stack, "merged-v1", "tools")["tripped"]
    metrics = httpx.get(f"{stack.url}/metrics").text
    assert 'llm_gateway_eval_gate_tripped{cohort="structured",model="merged-v1"} 1.0' in metrics
    assert 'llm_gateway_eval_fail_rate{cohort="structured",evaluator="json_valid",model="merged-v1"} 1.0' in metrics
    shadow_before = stack.stats("merged")["models"]["merged-v1"]["shadow"]
    for _ in range(5):
        structured(stack)
    assert stack.wait_for(lambda: stack.stats("merged")["models"]["merged-v1"]["shadow"] == shadow_before + 5)
    stack.configure("merged", {"reset_profile": True})  # healed
    sent = 0
    while gate(stack, "merged-v1", "structured")["tripped"] and sent < 100:
        structured(stack)
        sent += 1
    assert stack.wait_for(lambda: not gate(stack, "merged-v1", "structured")["tripped"])
    # 6 failed probes since the trip stay in the 40-outcome window: healthy probes must bring them under 10 %
    assert 30 <= sent <= 60, sent
    assert "recovered below 0.1" in gate(stack, "merged-v1", "structured")["reason"]
    assert structured(stack).headers["x-gateway-model"] == "merged-v1"


def test_malformed_tool_calls_trip_the_tools_cohort(stack: Stack) -> None:
    stack.configure("merged", {"set": {"malformed_tool_call_rate": 1.0}})
    for _ in range(20):
        chat(stack, tools=TOOLS)
    assert stack.wait_for(lambda: gate(stack, "merged-v1", "tools")["tripped"])
    response = chat(stack, tools=TOOLS)
    assert response.headers["x-gateway-fallback"] == "eval:merged-v1"
    assert not gate(stack, "merged-v1", "structured")["tripped"]


def test_negative_feedback_trips_and_admin_resets(stack: Stack) -> None:
    ids = [chat(stack).headers["x-request-id"] for _ in range(10)]
    for request_id in ids:
        response = httpx.post(f"{stack.url}/v1/feedback", json={"request_id": request_id, "score": -1})
        assert response.status_code == 200
        assert response.json() == {
            "request_id": request_id,
            "model": "merged-v1",
            "cohort": "chat",
            "counted_as": "fail",
        }
    assert gate(stack, "merged-v1", "chat")["tripped"]
    assert chat(stack).headers["x-gateway-fallback"] == "eval:merged-v1"
    reset = httpx.post(f"{stack.url}/admin/gates/merged-v1/chat", json={"action": "reset"}, headers=AUTH)
    assert reset.status_code == 200 and reset.json()["tripped"] is False
    assert chat(stack).headers["x-gateway-model"] == "merged-v1"


def test_feedback_errors(stack: Stack) -> None:
    url = f"{stack.url}/v1/feedback"
    assert httpx.post(url, json={"request_id": "never-seen", "score": -1}).status_code == 404
    assert httpx.post(url, json={"request_id": "x", "score": 5}).json()["error"]["param"] == "score"
    assert httpx.post(url, json={"score": 1}).status_code == 400
    assert httpx.post(url, content=b"{bad").status_code == 400


def test_pushed_evals_trip_a_gate_and_bad_pushes_change_nothing(stack: Stack) -> None:
    url = f"{stack.url}/admin/evals"
    bad = {
        "results": [
            {"model": "merged-v1", "cohort": "tools", "evaluator": "tool_call_valid", "failed": 30},
            {"model": "nope", "cohort": "tools", "evaluator": "x", "passed": 1},
        ]
    }
    assert httpx.post(url, json=bad, headers=AUTH).status_code == 400
    assert not gate(stack, "merged-v1", "tools")["tripped"]
    assert httpx.post(url, json=bad).status_code == 401
    good = {
        "results": [
            {"model": "merged-v1", "cohort": "tools", "evaluator": "tool_call_valid", "passed": 70, "failed": 30}
        ]
    }
    response = httpx.post(url, json=good, headers=AUTH)
    assert response.status_code == 200 and response.json()["accepted"] == 1
    assert gate(stack, "merged-v1", "tools")["tripped"]
    assert chat(stack, tools=TOOLS).headers["x-gateway-fallback"] == "eval:merged-v1"


def test_manual_trip_holds_until_manual_reset(stack: Stack) -> None:
    url = f"{stack.url}/admin/gates/merged-v1/structured"
    assert httpx.post(url, json={"action": "trip"}, headers=AUTH).json()["tripped"] is True
    for _ in range(25):
        assert structured(stack).headers["x-gateway-model"] == "source-a"
    assert stack.wait_for(lambda: stack.stats("merged")["models"]["merged-v1"]["shadow"] == 25)  # probes
    assert gate(stack, "merged-v1", "structured")["tripped"]  # good probes do not undo a manual trip
    assert httpx.post(url, json={"action": "reset"}, headers=AUTH).json()["tripped"] is False
    assert httpx.post(url, json={"action": "flip"}, headers=AUTH).status_code == 400
    assert (
        httpx.post(f"{stack.url}/admin/gates/merged-v1/nope", json={"action": "trip"}, headers=AUTH).status_code == 400
    )


def test_refusals_trip_an_observe_mode_gate_without_rerouting() -> None:
    os.environ["GATEWAY_ADMIN_TOKEN"] = TOKEN
    try:
        with make_stack("observe") as stack:
            stack.configure("merged", {"set": {"refusal_rate": 1.0}})
            for _ in range(10):
                chat(stack)
            assert stack.wait_for(lambda: gate(stack, "merged-v1", "chat")["tripped"])
            assert gate(stack, "merged-v1", "chat")["mode"] == "observe"
            response = chat(stack)
            assert response.headers["x-gateway-model"] == "merged-v1"
            assert "x-gateway-fallback" not in response.headers
            windows = httpx.get(f"{stack.url}/admin/state", headers=AUTH).json()["evals"]["windows"]
            refusal = next(w for w in windows if w["evaluator"] == "no_refusal")
            assert refusal["model"] == "merged-v1" and refusal["fail_rate"] == 1.0
    finally:
        del os.environ["GATEWAY_ADMIN_TOKEN"]
