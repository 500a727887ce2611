"""``POST /v1/feedback`` with client keys: a key scores only its own requests, once each, within its rate limit."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import Stack
from tests.policies import ONE_MODEL_POLICY

ALICE, BOB, CAROL = "sk-alice-1", "sk-bob-2", "sk-carol-3"
TOKEN = "feedback-admin-token"
MODELS = ONE_MODEL_POLICY


def digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


KEYED = (
    MODELS
    + f"""
keys:
  alice: {{key: "{digest(ALICE)}"}}
  bob: {{key: "{digest(BOB)}"}}
  carol: {{key: "{digest(CAROL)}", rate_limit: {{requests_per_min: 3}}}}
"""
)


@pytest.fixture(scope="module")
def keyed() -> Iterator[Stack]:
    os.environ["GATEWAY_ADMIN_TOKEN"] = TOKEN
    try:
        with Stack(KEYED, {"sim": ["tiny"]}) as stack:
            yield stack
    finally:
        del os.environ["GATEWAY_ADMIN_TOKEN"]


def auth(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def chat(stack: Stack, key: str | None, request_id: str | None = None) -> httpx.Response:
    headers = {**auth(key), **({"x-request-id": request_id} if request_id else {})}
    payload = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(f"{stack.url}/v1/chat/completions", json=payload, headers=headers, timeout=10)


def answered(stack: Stack, key: str | None, request_id: str | None = None) -> str:
    response = chat(stack, key, request_id)
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


def score(stack: Stack, key: str | None, request_id: str, value: float = -1) -> httpx.Response:
    body = {"request_id": request_id, "score": value}
    return httpx.post(f"{stack.url}/v1/feedback", json=body, headers=auth(key), timeout=10)


def feedback_outcomes(stack: Stack) -> int:
    state = httpx.get(f"{stack.url}/admin/state", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10).json()
    return sum(w["outcomes"] for w in state["evals"]["windows"] if w["evaluator"] == "user_feedback")


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    found: dict[str, Any] = response.json()["error"]
    return found


def test_a_key_scores_only_its_own_requests_and_learns_nothing_about_others(keyed: Stack) -> None:
    alices = answered(keyed, ALICE)
    bobs = answered(keyed, BOB)
    counted = feedback_outcomes(keyed)
    foreign = score(keyed, BOB, alices)
    unknown = score(keyed, BOB, "never-sent-by-anyone")
    assert error(foreign, 404)["code"] == "request_not_found"
    assert foreign.content == unknown.content  # another key's request reads exactly like an unknown id
    assert error(score(keyed, None, alices), 401)["type"] == "authentication_error"
    assert feedback_outcomes(keyed) == counted
    mine = score(keyed, ALICE, alices)
    assert mine.status_code == 200, mine.text
    assert mine.json() == {"request_id": alices, "model": "tiny", "cohort": "chat", "counted_as": "fail"}
    assert score(keyed, BOB, bobs, 1).json()["counted_as"] == "pass"
    assert feedback_outcomes(keyed) == counted + 2


def test_one_score_per_request_id_even_when_the_id_is_reused(keyed: Stack) -> None:
    chosen = "client-chosen-id-1"
    answered(keyed, ALICE, chosen)
    counted = feedback_outcomes(keyed)
    assert score(keyed, ALICE, chosen).status_code == 200
    again = error(score(keyed, ALICE, chosen, 1), 409)
    assert again["code"] == "feedback_already_recorded" and again["type"] == "invalid_request_error"
    answered(keyed, ALICE, chosen)  # resending under the same id does not buy a second vote
    assert error(score(keyed, ALICE, chosen), 409)["code"] == "feedback_already_recorded"
    answered(keyed, BOB, chosen)  # the same id from another key is that key's own request
    assert score(keyed, BOB, chosen).status_code == 200
    assert error(score(keyed, BOB, chosen), 409)["code"] == "feedback_already_recorded"
    assert feedback_outcomes(keyed) == counted + 2


def test_feedback_is_rate_limited_with_the_keys_requests(keyed: Stack) -> None:
    carols = answered(keyed, CAROL)  # 1 of carol's 3 requests a minute
    assert score(keyed, CAROL, carols).status_code == 200  # 2
    assert score(keyed, CAROL, "never-sent-by-anyone").status_code == 404  # 3
    limited = score(keyed, CAROL, carols)
    assert error(limited, 429)["type"] == "rate_limit_error"
    assert int(limited.headers["retry-after"]) >= 1
    assert chat(keyed, CAROL).status_code == 429  # one budget for the key's requests of every kind
    assert score(keyed, ALICE, answered(keyed, ALICE)).status_code == 200  # other keys are not affected


def test_without_keys_feedback_stays_open_and_counts_once() -> None:
    with Stack(MODELS, {"sim": ["tiny"]}) as stack:
        request_id = answered(stack, None)
        assert score(stack, None, request_id).status_code == 200
        assert score(stack, "sk-anything", request_id).status_code == 409  # no keys: a bearer is not a key
        assert error(score(stack, None, request_id), 409)["code"] == "feedback_already_recorded"
