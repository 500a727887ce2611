"""Progressive rollouts end to end: a candidate stepped up cohort by cohort through a running gateway, judged on
its answers, rolled back by itself when it fails, and driven by an operator through the admin API."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import Stack

TOKEN = "rollout-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
POLICY = """
version: 1
public_models: [assistant]
models:
  incumbent: {kind: source, backends: ["${inc}"]}
  merged-v1: {kind: merged, sources: [incumbent], backends: ["${cand}"]}
cohorts:
  - {name: billing, match: {header: {x-topic: billing}}}
  - {name: chat, default: true}
routes:
  billing:
    target: incumbent
    rollout:
      candidate: merged-v1
      steps: [10, 50, 100]
      step_s: ${step_s}
      min_samples: 15
      sticky: user
      max_error_rate: 0.1
      max_latency_ratio: 50
  chat: {target: incumbent}
"""
SIMS = {"inc": ["incumbent"], "cand": ["merged-v1"]}


@pytest.fixture
def admin_token() -> Iterator[None]:
    os.environ["GATEWAY_ADMIN_TOKEN"] = TOKEN
    yield
    del os.environ["GATEWAY_ADMIN_TOKEN"]


def make_stack(step_s: float) -> Stack:
    return Stack(POLICY.replace("${step_s}", str(step_s)), SIMS)


def ask(stack: Stack, user: str, topic: str = "billing", client: httpx.Client | None = None) -> httpx.Response:
    body = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "user": user}
    send = client.post if client is not None else httpx.post
    return send(f"{stack.url}/v1/chat/completions", json=body, headers={"x-topic": topic}, timeout=10)


def rollout(stack: Stack) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(f"{stack.url}/admin/rollouts", headers=AUTH).json()["rollouts"][0]
    return found


def act(stack: Stack, action: str) -> httpx.Response:
    return httpx.post(f"{stack.url}/admin/rollouts/billing", json={"action": action}, headers=AUTH)


def test_a_healthy_candidate_steps_up_to_promoted_with_sticky_users_and_other_cohorts_untouched(
    admin_token: None,
) -> None:
    with make_stack(step_s=0.6) as stack, httpx.Client(timeout=10) as client:
        assert stack.wait_for(lambda: rollout(stack)["weight"] == 10.0)
        seen_weights: list[float] = []
        on_candidate: set[str] = set()
        shares: dict[float, list[bool]] = {}
        round_ = 0
        while rollout(stack)["state"] != "promoted" and round_ < 60:
            round_ += 1
            weight = rollout(stack)["weight"]
            for i in range(40):
                user = f"user-{i}"
                answer = ask(stack, user, client=client)
                assert answer.status_code == 200, answer.text
                candidate = answer.headers["x-gateway-model"] == "merged-v1"
                if user in on_candidate:
                    assert candidate, f"{user} left the candidate at {weight}%"
                if candidate:
                    on_candidate.add(user)
                shares.setdefault(weight, []).append(candidate)
                assert ask(stack, user, topic="chat", client=client).headers["x-gateway-model"] == "incumbent"
            if not seen_weights or seen_weights[-1] != weight:
                seen_weights.append(weight)
        state = rollout(stack)
        assert state["state"] == "promoted" and state["weight"] == 100.0, state
        assert seen_weights[:3] == [10.0, 50.0, 100.0][: len(seen_weights[:3])]
        assert sorted(set(seen_weights)) == seen_weights  # steps only went up
        for weight, answers in shares.items():
            if weight in (10.0, 50.0) and len(answers) >= 40:
                p, n = weight / 100, len(answers)
                # sticky users make the share lumpy (40 users): 4 standard deviations of 40 draws
                assert abs(sum(answers) / n - p) <= 4 * math.sqrt(p * (1 - p) / 40), (weight, sum(answers), n)
        assert all(ask(stack, f"user-{i}", client=client).headers["x-gateway-model"] == "merged-v1" for i in range(10))
        metrics = httpx.get(f"{stack.url}/metrics").text
        assert 'llm_gateway_rollout_weight{candidate="merged-v1",route="billing"} 100.0' in metrics
        assert 'llm_gateway_rollout_state{candidate="merged-v1",route="billing",state="promoted"} 1.0' in metrics
        assert (
            'llm_gateway_rollout_transitions_total{candidate="merged-v1",route="billing",to="promoted"} 1.0' in metrics
        )


def test_a_failing_candidate_is_rolled_back_and_held_until_resumed(admin_token: None) -> None:
    with make_stack(step_s=0.5) as stack, httpx.Client(timeout=10) as client:
        assert stack.wait_for(lambda: rollout(stack)["weight"] == 10.0)
        users = iter(range(100_000))
        while rollout(stack)["weight"] < 50 and rollout(stack)["state"] == "progressing":
            for _ in range(20):
                ask(stack, f"u-{next(users)}", client=client)
        assert rollout(stack)["weight"] == 50.0
        stack.configure("cand", {"set": {"error_rate": 1.0, "error_status": 500}})
        sent = 0
        while rollout(stack)["state"] == "progressing" and sent < 300:
            answer = ask(stack, f"u-{next(users)}", client=client)
            assert answer.status_code == 200  # a failing candidate request falls back to the incumbent
            sent += 1
        state = rollout(stack)
        assert state["state"] == "rolled_back" and state["weight"] == 0.0, state
        assert "error rate" in state["reason"]
        assert sent < 60, sent  # a handful of failures (max_error_rate 0.1 of 15), not min_samples of them
        stack.configure("cand", {"reset_profile": True})
        for _ in range(40):
            assert ask(stack, f"u-{next(users)}", client=client).headers["x-gateway-model"] == "incumbent"
        assert rollout(stack)["state"] == "rolled_back"  # held at 0 % through traffic
        assert act(stack, "pause").status_code == 409
        resumed = act(stack, "resume")
        assert resumed.status_code == 200 and resumed.json()["state"] == "progressing"
        assert resumed.json()["weight"] == 10.0  # starts again at the first step


def test_operator_actions_pause_resume_abort_promote(admin_token: None) -> None:
    with make_stack(step_s=3600) as stack:
        assert stack.wait_for(lambda: rollout(stack)["weight"] == 10.0)
        assert act(stack, "pause").json()["state"] == "paused"
        assert rollout(stack)["weight"] == 10.0
        assert act(stack, "pause").status_code == 409
        assert act(stack, "resume").json()["state"] == "progressing"
        promoted = act(stack, "promote").json()
        assert (promoted["state"], promoted["weight"]) == ("promoted", 100.0)
        assert all(ask(stack, f"p-{i}").headers["x-gateway-model"] == "merged-v1" for i in range(5))
        aborted = act(stack, "abort").json()
        assert (aborted["state"], aborted["weight"]) == ("rolled_back", 0.0)
        assert all(ask(stack, f"p-{i}").headers["x-gateway-model"] == "incumbent" for i in range(5))
        bad = httpx.post(f"{stack.url}/admin/rollouts/billing", json={"action": "faster"}, headers=AUTH)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "action"
        unknown = httpx.post(f"{stack.url}/admin/rollouts/chat", json={"action": "pause"}, headers=AUTH)
        assert unknown.status_code == 400


def test_a_reload_keeps_the_rollout_of_the_same_route_and_candidate_and_ends_a_removed_one(admin_token: None) -> None:
    with make_stack(step_s=3600) as stack:
        assert stack.wait_for(lambda: rollout(stack)["weight"] == 10.0)
        act(stack, "promote")
        text = stack.policy_path.read_text()
        stack.policy_path.write_text(text.replace("min_samples: 15", "min_samples: 16"))
        assert httpx.post(f"{stack.url}/admin/policy/reload", headers=AUTH).status_code == 200
        assert rollout(stack)["state"] == "promoted"  # same (route, candidate): kept
        without = text.split("    rollout:")[0] + "  chat: {target: incumbent}\n"
        stack.policy_path.write_text(without)
        assert httpx.post(f"{stack.url}/admin/policy/reload", headers=AUTH).status_code == 200
        assert httpx.get(f"{stack.url}/admin/rollouts", headers=AUTH).json() == {"rollouts": []}
        assert ask(stack, "x").headers["x-gateway-model"] == "incumbent"
        assert "llm_gateway_rollout_weight{" not in httpx.get(f"{stack.url}/metrics").text
        stack.policy_path.write_text(text)
        assert httpx.post(f"{stack.url}/admin/policy/reload", headers=AUTH).status_code == 200
        assert stack.wait_for(lambda: rollout(stack)["state"] == "progressing" and rollout(stack)["weight"] == 10.0)


GATED = POLICY.replace(
    "  chat: {target: incumbent}\n",
    """  chat: {target: incumbent}
evals:
  gates:
    - {models: [merged-v1], cohorts: [billing], evaluators: [json_valid], max_fail_rate: 0.2, min_samples: 8}
""",
)


def test_invalid_json_under_a_json_valid_gate_at_the_second_step_rolls_the_candidate_back(admin_token: None) -> None:
    with Stack(GATED.replace("${step_s}", "0.5"), SIMS) as stack, httpx.Client(timeout=10) as client:
        assert stack.wait_for(lambda: rollout(stack)["weight"] == 10.0)
        body = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        body["response_format"] = {"type": "json_object"}
        n = 0

        def send() -> httpx.Response:
            nonlocal n
            n += 1
            answer = client.post(
                f"{stack.url}/v1/chat/completions", json={**body, "user": f"j-{n}"}, headers={"x-topic": "billing"}
            )
            assert answer.status_code == 200, answer.text
            return answer

        while rollout(stack)["weight"] < 50 and n < 2000:
            send()
        assert rollout(stack)["weight"] == 50.0
        stack.configure("cand", {"set": {"invalid_json_rate": 1.0}})
        while rollout(stack)["state"] == "progressing" and n < 4000:
            send()
        state = rollout(stack)
        assert state["state"] == "rolled_back", state
        assert "eval gate" in state["reason"] and state["decided_on"]["gate_tripped"] is True
        assert all(send().headers["x-gateway-model"] == "incumbent" for _ in range(10))


BREAKER = """
version: 1
public_models: [assistant]
models:
  incumbent: {kind: source, backends: ["${inc}"]}
  merged-v1: {kind: merged, sources: [incumbent], backends: ["${cand}"]}
cohorts:
  - {name: billing, default: true}
routes:
  billing:
    target: incumbent
    rollout:
      candidate: merged-v1
      steps: [50, 100]
      step_s: 3600
      min_samples: 40
      max_error_rate: 0.2
      max_latency_ratio: 50
health:
  breaker: {consecutive_failures: 2, open_s: 60}
"""


def test_a_candidate_its_breaker_keeps_from_requests_still_fails_its_step(admin_token: None) -> None:
    with Stack(BREAKER, SIMS) as stack, httpx.Client(timeout=10) as client:
        assert stack.wait_for(lambda: rollout(stack)["weight"] == 50.0)
        for i in range(40):
            assert ask(stack, f"b-{i}", client=client).status_code == 200
        stack.configure("cand", {"set": {"error_rate": 1.0, "error_status": 500}})
        sent = 0
        while rollout(stack)["state"] == "progressing" and sent < 80:
            assert ask(stack, f"c-{sent}", client=client).status_code == 200
            sent += 1
        state = rollout(stack)
        # two real failures open the breaker; the candidate is asked no more, and what it would have got counts
        assert state["state"] == "rolled_back", state
        assert "error rate" in state["reason"]
