"""Fleet state end to end: three ``llm-gateway serve`` processes on one policy and one real ``redis-server``,
traffic spread round-robin as a Service spreads it (docs/fleet.md)."""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fleetkit import AUTH, Fleet, RedisServer, wait_until

MAIN_KEY, LIMITED_KEY = "fleet-main-key", "fleet-limited-key"
LIMIT = 60
POLICY = f"""
version: 1
public_models: [assistant]
models:
  merged-v1: {{kind: merged, sources: [source-a], backends: ["${{sim}}"]}}
  source-a:  {{kind: source, backends: ["${{sim}}"]}}
cohorts:
  - {{name: structured, match: {{response_format: json_object}}}}
  - {{name: manual, match: {{header: {{x-topic: manual}}}}}}
  - {{name: pushed, match: {{header: {{x-topic: pushed}}}}}}
  - {{name: scored, match: {{header: {{x-topic: scored}}}}}}
  - {{name: chat, default: true}}
routes:
  structured: {{target: merged-v1, fallback: sources}}
  manual:     {{target: merged-v1, fallback: sources}}
  pushed:     {{target: merged-v1, fallback: sources}}
  scored:     {{target: merged-v1, fallback: sources}}
  chat:       {{target: merged-v1, fallback: sources}}
evals:
  window: {{size: 60, min_samples: 30}}
  gates:
    - models: [merged-v1]
      cohorts: [structured, manual, pushed, scored]
      evaluators: [json_valid, user_feedback]
      max_fail_rate: 0.2
      min_samples: 30
keys:
  main: {{key: "sha256:{hashlib.sha256(MAIN_KEY.encode()).hexdigest()}"}}
  limited:
    key: "sha256:{hashlib.sha256(LIMITED_KEY.encode()).hexdigest()}"
    rate_limit: {{requests_per_min: {LIMIT}}}
"""
MODELS = ["merged-v1", "source-a"]
SPREAD_S = 2.0  # the contract: every instance routes by a transition within 2 s


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fleet(redis_server: RedisServer) -> Iterator[Fleet]:
    with Fleet(POLICY, MODELS, redis_server.url + "?prefix=e2e") as fleet:
        yield fleet


def chat(url: str, key: str = MAIN_KEY, topic: str | None = None, **body: Any) -> httpx.Response:
    payload = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, **body}
    headers = {"authorization": f"Bearer {key}"}
    if topic:
        headers["x-topic"] = topic
    return httpx.post(f"{url}/v1/chat/completions", json=payload, headers=headers, timeout=10)


def tripped_everywhere(fleet: Fleet, cohort: str, tripped: bool = True) -> bool:
    return all(fleet.gate(i, "merged-v1", cohort)["tripped"] is tripped for i in range(len(fleet.urls)))


def test_failures_spread_across_instances_trip_a_gate_no_instance_could_trip_alone(fleet: Fleet) -> None:
    fleet.configure({"model": "merged-v1", "set": {"invalid_json_rate": 1.0}})
    try:
        urls = itertools.cycle(fleet.urls)
        for i in range(33):  # 11 per instance, under the gate's min_samples of 30 on any one of them
            answer = chat(next(urls), response_format={"type": "json_object"})
            assert answer.status_code == 200, answer.text
            if i < 30:  # the fleet has fewer than 30 outcomes: nothing can have tripped yet
                assert answer.headers["x-gateway-model"] == "merged-v1"
        took = wait_until(lambda: tripped_everywhere(fleet, "structured"), SPREAD_S + 1)
        assert took is not None and took <= SPREAD_S, took
        for url in fleet.urls:
            rerouted = chat(url, response_format={"type": "json_object"})
            assert rerouted.headers["x-gateway-model"] == "source-a"
            assert rerouted.headers["x-gateway-fallback"] == "eval:merged-v1"
            assert chat(url).headers["x-gateway-model"] == "merged-v1"  # other cohorts unaffected
        state = fleet.state(1)
        window = next(
            w for w in state["evals"]["windows"] if (w["cohort"], w["evaluator"]) == ("structured", "json_valid")
        )
        assert window["outcomes"] >= 30 and window["fail_rate"] == 1.0  # 11 of them were this instance's
    finally:
        fleet.configure({"reset_profile": True})


def test_a_manual_trip_through_one_instance_holds_on_all_and_a_reset_through_another_releases_all(
    fleet: Fleet,
) -> None:
    answer = httpx.post(f"{fleet.urls[0]}/admin/gates/merged-v1/manual", json={"action": "trip"}, headers=AUTH)
    assert answer.status_code == 200 and answer.json()["shared"] is True
    took = wait_until(lambda: tripped_everywhere(fleet, "manual"), SPREAD_S + 1)
    assert took is not None and took <= SPREAD_S, took
    for url in fleet.urls:
        assert chat(url, topic="manual").headers["x-gateway-fallback"] == "eval:merged-v1"
    assert fleet.gate(2, "merged-v1", "manual")["manual"] is True
    answer = httpx.post(f"{fleet.urls[2]}/admin/gates/merged-v1/manual", json={"action": "reset"}, headers=AUTH)
    assert answer.status_code == 200 and answer.json()["shared"] is True
    took = wait_until(lambda: tripped_everywhere(fleet, "manual", tripped=False), SPREAD_S + 1)
    assert took is not None and took <= SPREAD_S, took
    for url in fleet.urls:
        assert chat(url, topic="manual").headers["x-gateway-model"] == "merged-v1"


def test_pushed_evals_through_one_instance_count_for_all(fleet: Fleet) -> None:
    results = [{"model": "merged-v1", "cohort": "pushed", "evaluator": "json_valid", "passed": 20, "failed": 20}]
    answer = httpx.post(f"{fleet.urls[1]}/admin/evals", json={"results": results}, headers=AUTH)
    assert answer.status_code == 200 and answer.json()["shared"] is True
    took = wait_until(lambda: tripped_everywhere(fleet, "pushed"), SPREAD_S + 1)
    assert took is not None and took <= SPREAD_S, took
    assert chat(fleet.urls[0], topic="pushed").headers["x-gateway-fallback"] == "eval:merged-v1"
    httpx.post(f"{fleet.urls[0]}/admin/gates/merged-v1/pushed", json={"action": "reset"}, headers=AUTH)


def test_feedback_sent_to_another_instance_is_accepted_counted_and_taken_once(fleet: Fleet) -> None:
    answered = chat(fleet.urls[0], topic="scored")
    assert answered.status_code == 200
    request_id = answered.headers["x-request-id"]
    auth = {"authorization": f"Bearer {MAIN_KEY}"}

    def score(i: int) -> httpx.Response:
        return httpx.post(f"{fleet.urls[i]}/v1/feedback", json={"request_id": request_id, "score": -1}, headers=auth)

    first = score(1)
    took = 0.0
    while first.status_code == 404 and took < SPREAD_S:  # the answer's record is shared at the next sync
        took += 0.1
        time.sleep(0.1)
        first = score(1)
    assert first.status_code == 200, first.text
    assert first.json() == {"request_id": request_id, "model": "merged-v1", "cohort": "scored", "counted_as": "fail"}
    second = score(2)
    assert second.status_code == 409, second.text
    assert second.json()["error"]["code"] == "feedback_already_recorded"

    def counted_everywhere() -> bool:
        for i in range(3):
            windows = fleet.state(i)["evals"]["windows"]
            if not any(w["cohort"] == "scored" and w["evaluator"] == "user_feedback" for w in windows):
                return False
        return True

    assert wait_until(counted_everywhere, SPREAD_S + 1) is not None
    other_key = httpx.post(
        f"{fleet.urls[1]}/v1/feedback",
        json={"request_id": request_id, "score": 1},
        headers={"authorization": f"Bearer {LIMITED_KEY}"},
    )
    assert other_key.status_code == 404  # another key's request stays invisible fleet-wide


def test_a_key_limit_holds_for_the_fleet_not_per_instance(fleet: Fleet) -> None:
    statuses = []
    with httpx.Client(timeout=10) as client:
        for url in itertools.islice(itertools.cycle(fleet.urls), 3 * LIMIT):
            payload = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            answer = client.post(
                f"{url}/v1/chat/completions", json=payload, headers={"authorization": f"Bearer {LIMITED_KEY}"}
            )
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                assert int(answer.headers["retry-after"]) >= 1
    admitted = statuses.count(200)
    assert statuses.count(429) + admitted == len(statuses)
    # within 10 % of the limit (the refill of the few seconds this took is a few more), not 3x it
    assert 0.9 * LIMIT <= admitted <= 1.1 * LIMIT + 3, admitted
