"""Fault injection through real sockets: killed, hanging, failing and unhealthy backends (issue: fallback on health)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.harness import Stack

POLICY = """
version: 1
public_models: [assistant]
models:
  merged-v1: {kind: merged, sources: [source-a], backends: ["${m1}", "${m2}"]}
  source-a:  {kind: source, backends: ["${src}"]}
  long-ctx:  {kind: source, backends: ["${long}"], max_context: 100000}
cohorts:
  - {name: prefixed, match: {header: {x-route: prefix}}}
  - {name: general, default: true}
routes:
  general:  {target: merged-v1, fallback: [source-a, long-ctx]}
  prefixed: {target: merged-v1, balance: prefix, prefix_chars: 64, fallback: [source-a]}
health:
  interval_s: 0.1
  resend_on_disconnect: true   # replicas are killed mid-request: what they held is sent on
  check_timeout_s: 0.5
  unhealthy_after: 2
  healthy_after: 2
  breaker: {consecutive_failures: 3, error_rate: 0.9, window_s: 10, min_requests: 50, open_s: 4}
  timeouts: {connect_s: 0.5, first_byte_s: 0.4, total_s: 2.5}
"""
SIMS = {"m1": ["merged-v1"], "m2": ["merged-v1"], "src": ["source-a"], "long": ["long-ctx"]}
TOKEN = "test-admin-token"


@pytest.fixture
def stack() -> Iterator[Stack]:
    os.environ["GATEWAY_ADMIN_TOKEN"] = TOKEN
    try:
        with Stack(POLICY, SIMS) as stack:
            yield stack
    finally:
        del os.environ["GATEWAY_ADMIN_TOKEN"]


def chat(stack: Stack, text: str = "hi", headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    payload = {"model": "assistant", "messages": [{"role": "user", "content": text}], "max_tokens": 4, **body}
    return httpx.post(f"{stack.url}/v1/chat/completions", json=payload, headers=headers, timeout=10)


def admin_state(stack: Stack) -> dict[str, Any]:
    response = httpx.get(f"{stack.url}/admin/state", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def backend_state(stack: Stack, model: str, index: int) -> dict[str, Any]:
    return next(b for b in admin_state(stack)["backends"] if b["model"] == model and b["index"] == index)


def test_killed_backends_under_load_cost_no_request(stack: Stack) -> None:
    async def load() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(limits=limits, timeout=10) as client:
            body = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            tasks = []
            for i in range(200):
                tasks.append(asyncio.create_task(client.post(f"{stack.url}/v1/chat/completions", json=body)))
                if i == 60:
                    await asyncio.sleep(0.05)
                    await asyncio.get_running_loop().run_in_executor(None, stack.kill_sim, "m1")
                if i == 120:
                    await asyncio.sleep(0.05)
                    await asyncio.get_running_loop().run_in_executor(None, stack.kill_sim, "m2")
            return await asyncio.gather(*tasks)

    started = time.monotonic()
    responses = asyncio.run(load())
    assert time.monotonic() - started < 30
    assert [r.status_code for r in responses] == [200] * 200
    models = Counter(r.headers["x-gateway-model"] for r in responses)
    fallbacks = [r for r in responses if "x-gateway-fallback" in r.headers]
    served_by_source = stack.requests_to("src", "source-a")
    assert models["source-a"] == served_by_source > 0
    assert len(fallbacks) == served_by_source
    assert {r.headers["x-gateway-fallback"].split(":")[1] for r in fallbacks} == {"merged-v1"}
    metrics = httpx.get(f"{stack.url}/metrics").text
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("llm_gateway_fallbacks_total{")
    )
    assert counted == served_by_source


def test_hanging_backend_falls_back_after_first_byte_timeout(stack: Stack) -> None:
    for sim in ("m1", "m2"):
        stack.configure(sim, {"set": {"hang_rate": 1.0}})
    started = time.monotonic()
    response = chat(stack)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.headers["x-gateway-fallback"] == "timeout:merged-v1"
    assert response.headers["x-gateway-model"] == "source-a"
    assert 0.7 < elapsed < 2.5  # two replicas x first_byte_s 0.4, within total_s
    stack.configure("src", {"set": {"hang_rate": 1.0}})
    stack.configure("long", {"set": {"hang_rate": 1.0}})
    started = time.monotonic()
    response = chat(stack)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "all_attempts_failed"
    assert time.monotonic() - started < 3.0  # bounded by total_s (2.5 s)


def test_5xx_burst_opens_breaker_and_half_open_probe_restores(stack: Stack) -> None:
    stack.configure("m1", {"set": {"error_rate": 1.0, "error_status": 500}})
    for _ in range(20):  # m1 is the first pick about half the time: 3 failures in a row are all but certain
        assert chat(stack).status_code == 200
    breaker = backend_state(stack, "merged-v1", 0)["breaker"]
    assert breaker["state"] == "open"
    assert "consecutive failures" in breaker["last_reason"]
    errors_when_open = stack.stats("m1")["models"]["merged-v1"]["errors"]
    for _ in range(10):
        assert chat(stack).headers["x-gateway-model"] == "merged-v1"
    assert stack.stats("m1")["models"]["merged-v1"]["errors"] == errors_when_open  # no traffic while open
    metrics = httpx.get(f"{stack.url}/metrics").text
    assert 'llm_gateway_breaker_open{backend="merged-v1[0]",model="merged-v1"} 1.0' in metrics
    stack.configure("m1", {"reset_profile": True})
    time.sleep(4.1)  # open_s: long enough that the ten requests above finish inside it on a loaded machine
    assert stack.wait_for(
        lambda: chat(stack) is not None and backend_state(stack, "merged-v1", 0)["breaker"]["state"] == "closed"
    )
    assert stack.requests_to("m1", "merged-v1") > errors_when_open


def test_health_checks_eject_and_restore_a_backend(stack: Stack) -> None:
    stack.configure("m1", {"health_status": 503})
    assert stack.wait_for(lambda: not backend_state(stack, "merged-v1", 0)["healthy"], timeout=3)
    before = stack.requests_to("m1", "merged-v1")
    for _ in range(10):
        assert chat(stack).status_code == 200
    assert stack.requests_to("m1", "merged-v1") == before
    assert "503" in backend_state(stack, "merged-v1", 0)["last_check_error"]
    metrics = httpx.get(f"{stack.url}/metrics").text
    assert 'llm_gateway_backend_up{backend="merged-v1[0]",model="merged-v1"} 0.0' in metrics
    stack.configure("m1", {"health_status": 200})
    assert stack.wait_for(lambda: backend_state(stack, "merged-v1", 0)["healthy"], timeout=3)
    for _ in range(10):
        chat(stack)
    assert stack.requests_to("m1", "merged-v1") > before


def test_all_backends_unhealthy_makes_readyz_503(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/readyz").status_code == 200
    for sim in SIMS:
        stack.configure(sim, {"health_status": 500})
    assert stack.wait_for(lambda: httpx.get(f"{stack.url}/readyz").status_code == 503, timeout=3)
    response = chat(stack)
    assert response.status_code == 503
    assert response.headers["x-gateway-fallback"] == "unhealthy:merged-v1"
    for sim in SIMS:
        stack.configure(sim, {"health_status": 200})
    assert stack.wait_for(lambda: httpx.get(f"{stack.url}/readyz").status_code == 200, timeout=3)


def test_stream_cut_midway_ends_with_an_error_event(stack: Stack) -> None:
    for sim in ("m1", "m2"):
        stack.configure(sim, {"set": {"stream_cut_after": 2, "output_tokens": 10}})
    body = {"model": "assistant", "messages": [{"role": "user", "content": "x"}], "stream": True, "max_tokens": 10}
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=5) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert "data: [DONE]" not in lines
    last = json.loads(lines[-1].removeprefix("data: "))
    assert last["error"]["code"] == "stream_error"
    assert set(last["error"]) == {"message", "type", "param", "code"}
    metrics = httpx.get(f"{stack.url}/metrics").text
    assert 'status="stream_error"' in metrics
    with pytest.raises(openai.APIError):
        client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0)
        list(
            client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "x"}], stream=True)
        )


def test_too_long_prompt_goes_to_the_larger_context_model(stack: Stack) -> None:
    stack.configure("long", {"set": {"max_model_len": 100000}})
    response = chat(stack, "word " * 6000)
    assert response.status_code == 200
    assert response.headers["x-gateway-model"] == "long-ctx"
    assert response.headers["x-gateway-fallback"] == "context_window:merged-v1"
    assert stack.requests_to("src", "source-a") == 0  # no larger context declared: skipped


def test_prefix_affinity_keeps_a_prefix_on_one_replica(stack: Stack) -> None:
    def replica_for(system: str) -> str:
        response = httpx.post(
            f"{stack.url}/v1/chat/completions",
            json={
                "model": "assistant",
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": str(time.time())}],
                "max_tokens": 2,
            },
            headers={"x-route": "prefix"},
        )
        assert response.status_code == 200
        m1 = stack.requests_to("m1", "merged-v1")
        stack.reset()
        return "m1" if m1 else "m2"

    for system in ("You are a billing agent. " * 4, "You are a policy agent with a long prompt. " * 2):
        assert len({replica_for(system) for _ in range(8)}) == 1
    assert len({replica_for(f"prompt number {i} " * 8) for i in range(16)}) == 2


def test_manual_drain_and_restore(stack: Stack) -> None:
    url = f"{stack.url}/admin/backends/merged-v1/1"
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert httpx.post(url, json={"action": "drain"}).status_code == 401
    drained = httpx.post(url, json={"action": "drain"}, headers=auth)
    assert drained.status_code == 200 and drained.json()["drained"] is True
    for _ in range(10):
        assert chat(stack).status_code == 200
    assert stack.requests_to("m2", "merged-v1") == 0
    assert httpx.post(url, json={"action": "restore"}, headers=auth).json()["drained"] is False
    assert httpx.post(url, json={"action": "explode"}, headers=auth).status_code == 400
    assert (
        httpx.post(f"{stack.url}/admin/backends/merged-v1/7", json={"action": "drain"}, headers=auth).status_code == 400
    )
    for _ in range(20):
        chat(stack)
    assert stack.requests_to("m2", "merged-v1") > 0
