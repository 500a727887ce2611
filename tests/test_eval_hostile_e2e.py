"""Hostile schemas through a running gateway: evaluating them never stalls other requests or fails the model.

The simulator answers with the schema's ``enum`` value, so the client picks the exact answer its own pattern is
checked against. With Python's ``re`` the first case holds the event loop (and, here, the whole process) for
seconds; the second is quick in ``re`` but over the regex budget, so it must count as n/a rather than a failure.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import Stack
from tests.policies import ONE_MODEL_POLICY

POLICY = ONE_MODEL_POLICY
TOKEN = "hostile-eval-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
STALLS_RE = "^(a|aa)+$|!$"  # `re` tries every way to split the a's before it reaches the '!' alternative
STALLING_ANSWER = "a" * 38 + "!"  # about 8 s in `re`; matches, so the verdict is pass
BIG_PROGRAM = "^(?:" + "|".join(f"w{i}q" for i in range(2000)) + ")$"
LONG_ANSWER = "a" * 1000  # does not match BIG_PROGRAM; checking it would cost more RE2 steps than one evaluation has
PROMPT_S = 0.5


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    os.environ["GATEWAY_ADMIN_TOKEN"] = TOKEN
    try:
        with Stack(POLICY, {"sim": ["tiny"]}) as stack:
            yield stack
    finally:
        del os.environ["GATEWAY_ADMIN_TOKEN"]


def chat(stack: Stack, **body: Any) -> httpx.Response:
    payload = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400, **body}
    response = httpx.post(f"{stack.url}/v1/chat/completions", json=payload, timeout=30)
    assert response.status_code == 200, response.text
    return response


def window(stack: Stack, evaluator: str) -> dict[str, Any]:
    state = httpx.get(f"{stack.url}/admin/state", headers=AUTH, timeout=30).json()
    found = [w for w in state["evals"]["windows"] if w["evaluator"] == evaluator and w["model"] == "tiny"]
    return found[0] if found else {"outcomes": 0, "fail_rate": 0.0}


class LagProbe:
    """Plain requests sent one after another from a thread for as long as the block runs: the slowest one's time."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                chat(self._stack, max_tokens=4)
            except (httpx.TimeoutException, AssertionError):
                self.latencies.append(float("inf"))
                continue
            self.latencies.append(time.monotonic() - started)

    def __enter__(self) -> LagProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def wait_evaluated(stack: Stack, before: int, answers: int) -> None:
    """The online evaluators ran on every answer (``non_empty`` applies to all and is recorded in the same pass)."""
    assert stack.wait_for(lambda: window(stack, "non_empty")["outcomes"] >= before + answers), (before, answers)


def test_a_catastrophic_pattern_in_response_format_stalls_nothing(stack: Stack) -> None:
    schema = {"type": "string", "enum": [STALLING_ANSWER], "pattern": STALLS_RE}
    response_format = {"type": "json_schema", "json_schema": {"name": "word", "schema": schema}}
    before = window(stack, "non_empty")["outcomes"]
    with LagProbe(stack) as probe:
        for _ in range(3):
            answer = chat(stack, response_format=response_format)
            assert answer.json()["choices"][0]["message"]["content"] == f'"{STALLING_ANSWER}"'
        time.sleep(1)  # the evaluations run now, after the answers went out
    wait_evaluated(stack, before, 3 + len(probe.latencies))
    assert len(probe.latencies) > 3 and max(probe.latencies) < PROMPT_S, probe.latencies
    checked = window(stack, "json_schema")
    assert checked["outcomes"] == 3 and checked["fail_rate"] == 0.0, checked


def test_a_tool_schema_over_the_regex_budget_is_not_counted_as_a_failure(stack: Stack) -> None:
    parameters = {
        "type": "object",
        "properties": {"code": {"type": "string", "enum": [LONG_ANSWER], "pattern": BIG_PROGRAM}},
        "required": ["code"],
    }
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": parameters}}]
    before = window(stack, "non_empty")["outcomes"]
    with LagProbe(stack) as probe:
        for _ in range(3):
            calls = chat(stack, tools=tools, tool_choice="required").json()["choices"][0]["message"]["tool_calls"]
            assert calls[0]["function"]["name"] == "lookup" and LONG_ANSWER in calls[0]["function"]["arguments"]
        time.sleep(1)
    wait_evaluated(stack, before, 3 + len(probe.latencies))
    assert len(probe.latencies) > 3 and max(probe.latencies) < PROMPT_S, probe.latencies
    assert window(stack, "tool_call_valid")["outcomes"] == 0  # n/a each time: nothing recorded, no failure
