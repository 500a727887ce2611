"""A rollout across a fleet: two gateway instances on one Redis serve the same step, and a restart of both keeps it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fleetkit import AUTH, Fleet, RedisServer, wait_until

POLICY = """
version: 1
public_models: [assistant]
models:
  incumbent: {kind: source, backends: ["${sim}"]}
  merged-v1: {kind: merged, sources: [incumbent], backends: ["${sim}"]}
cohorts:
  - {name: chat, default: true}
routes:
  chat:
    target: incumbent
    rollout:
      candidate: merged-v1
      steps: [10, 30, 60, 90]
      step_s: 0.5
      min_samples: 6
      sticky: user
      max_latency_ratio: 100  # both models are one simulator: a loaded machine must not fail the step on noise
"""


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def rollout(fleet: Fleet, i: int) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(f"{fleet.urls[i]}/admin/rollouts", headers=AUTH, timeout=5).json()["rollouts"][0]
    return found


def answered_by(fleet: Fleet, i: int, user: str) -> str:
    body = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "user": user}
    answer = httpx.post(f"{fleet.urls[i]}/v1/chat/completions", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.headers["x-gateway-model"]


def same_step(fleet: Fleet) -> bool:
    a, b = rollout(fleet, 0), rollout(fleet, 1)
    return (a["state"], a["step"], a["weight"]) == (b["state"], b["step"], b["weight"])


def test_two_instances_serve_the_same_step_and_a_restart_of_both_keeps_it(redis_server: RedisServer) -> None:
    with Fleet(POLICY, ["incumbent", "merged-v1"], redis_server.url + "?prefix=rollout", instances=2) as fleet:
        users = [f"user-{n}" for n in range(30)]
        sent = 0
        while rollout(fleet, 0)["weight"] < 60 and sent < 2000:
            for user in users[:10]:
                answered_by(fleet, sent % 2, user)
                sent += 1
        paused = httpx.post(f"{fleet.urls[1]}/admin/rollouts/chat", json={"action": "pause"}, headers=AUTH)
        assert paused.status_code == 200, paused.text
        step = (paused.json()["step"], paused.json()["weight"])
        assert step[1] >= 60
        assert wait_until(lambda: same_step(fleet) and rollout(fleet, 0)["state"] == "paused", 2) is not None
        for user in users:  # the same user gets the same side on either instance
            assert answered_by(fleet, 0, user) == answered_by(fleet, 1, user)
        fleet.restart_gateways()
        for i in range(2):
            state = rollout(fleet, i)
            assert (state["state"], state["step"], state["weight"]) == ("paused", *step), state
        resumed = httpx.post(f"{fleet.urls[0]}/admin/rollouts/chat", json={"action": "resume"}, headers=AUTH)
        assert resumed.status_code == 200 and resumed.json()["weight"] == step[1]
        assert wait_until(lambda: same_step(fleet) and rollout(fleet, 1)["state"] == "progressing", 2) is not None
