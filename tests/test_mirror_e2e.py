"""Mirroring end to end: sampled shadow copies to a candidate, evaluated and compared, never slowing the primary."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import Stack

POLICY = """
version: 1
public_models: [assistant]
models:
  primary:   {kind: source,    backends: ["${primary}"]}
  candidate: {kind: candidate, sources: [primary], backends: ["${candidate}"]}
cohorts:
  - {name: mirrored, match: {header: {x-mirror: "yes"}}}
  - {name: self_mirror, match: {header: {x-mirror: self}}}
  - {name: plain, default: true}
routes:
  mirrored:
    target: primary
    mirror: {to: [candidate], sample: ${sample}, max_inflight: 2, timeout_s: 10}
  self_mirror:
    target: primary
    mirror: {to: [primary, candidate], sample: 1.0}
  plain: {target: primary}
"""
SIMS = {"primary": ["primary"], "candidate": ["candidate"]}
TOKEN = "mirror-token"


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    sample = getattr(request, "param", 1.0)
    os.environ["GATEWAY_ADMIN_TOKEN"] = TOKEN
    try:
        with Stack(POLICY.replace("${sample}", str(sample)), SIMS) as stack:
            yield stack
    finally:
        del os.environ["GATEWAY_ADMIN_TOKEN"]


def chat(stack: Stack, mirror: str | None = "yes", request_id: str | None = None, **body: Any) -> httpx.Response:
    headers = {"x-mirror": mirror} if mirror else {}
    if request_id:
        headers["x-request-id"] = request_id
    payload = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, **body}
    response = httpx.post(f"{stack.url}/v1/chat/completions", json=payload, headers=headers, timeout=20)
    assert response.status_code == 200, response.text
    return response


def shadows(stack: Stack, sim: str = "candidate") -> int:
    return int(stack.stats(sim)["models"][sim]["shadow"])


@pytest.mark.parametrize("stack", [0.5], indirect=True)
def test_sample_share_is_binomial_and_deterministic_per_request_id(stack: Stack) -> None:
    for i in range(400):
        chat(stack, request_id=f"req-{i}")
    assert stack.wait_for(lambda: stack.stats("candidate")["models"]["candidate"]["running"] == 0)
    mirrored = shadows(stack)
    assert 170 <= mirrored <= 230, mirrored  # 400 x 0.5 ± 3 sigma
    assert stack.requests_to("primary", "primary") == 400
    assert shadows(stack, "primary") == 0
    # the same request id is always mirrored or never
    stack.reset()
    for i in range(40):
        chat(stack, request_id=f"req-{i % 4}")
    time.sleep(0.3)
    assert shadows(stack) in {0, 10, 20, 30, 40}
    first = [shadows(stack)]
    stack.reset()
    for i in range(4):
        chat(stack, request_id=f"req-{i}")
    time.sleep(0.3)
    assert shadows(stack) * 10 == first[0]


def test_shadow_request_shape_and_never_to_the_answering_model(stack: Stack) -> None:
    chat(stack, mirror="self", stream=True)
    assert stack.wait_for(lambda: shadows(stack) == 1)
    stats = stack.stats("candidate")["models"]["candidate"]
    assert stats["non_stream"] == 1 and stats["stream"] == 0  # shadows are sent non-streaming
    headers = stats["last_headers"]
    assert headers["x-gateway-shadow"] == "1"
    assert "x-request-id" in headers
    assert shadows(stack, "primary") == 0
    assert stack.requests_to("primary", "primary") == 1


def test_slow_candidate_never_slows_the_primary_and_excess_is_dropped(stack: Stack) -> None:
    stack.configure("candidate", {"set": {"ttft_s": 5.0}})

    async def timed(mirror: str | None) -> list[float]:
        async with httpx.AsyncClient(timeout=20) as client:
            body = {"model": "assistant", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}
            headers = {"x-mirror": mirror} if mirror else {}

            async def one() -> float:
                started = time.perf_counter()
                response = await client.post(f"{stack.url}/v1/chat/completions", json=body, headers=headers)
                assert response.status_code == 200
                assert "x-gateway-fallback" not in response.headers
                return time.perf_counter() - started

            return list(await asyncio.gather(*(one() for _ in range(20))))

    off = asyncio.run(timed(None))
    on = asyncio.run(timed("yes"))
    assert statistics.median(on) < statistics.median(off) * 3 + 0.05
    assert max(on) < 1.0  # nothing waited for the 5 s candidate
    metrics = httpx.get(f"{stack.url}/metrics").text
    dropped = next(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("llm_gateway_mirror_requests_total{") and 'outcome="dropped"' in line
    )
    assert dropped == 16  # 2 running + 2 queued of 20


def test_agreement_follows_the_candidate_behavior(stack: Stack) -> None:
    stack.configure("candidate", {"set": {"invalid_json_rate": 1.0}})
    for _ in range(10):
        chat(stack, response_format={"type": "json_object"})
    auth = {"authorization": f"Bearer {TOKEN}"}

    def agreement() -> dict[str, Any]:
        state = httpx.get(f"{stack.url}/admin/state", headers=auth).json()
        result: dict[str, Any] = state["mirror"]["agreement"].get("candidate/mirrored", {})
        return result

    assert stack.wait_for(lambda: sum(agreement().get("json_valid", {}).values()) == 10)
    assert agreement()["json_valid"] == {"agree": 0, "disagree": 10}
    metrics = httpx.get(f"{stack.url}/metrics").text
    labels = 'check="json_valid",cohort="mirrored",model="candidate",result="disagree"'
    assert f"llm_gateway_mirror_agreement_total{{{labels}}} 10.0" in metrics
    windows = httpx.get(f"{stack.url}/admin/state", headers=auth).json()["evals"]["windows"]
    json_window = next(w for w in windows if w["model"] == "candidate" and w["evaluator"] == "json_valid")
    assert json_window["cohort"] == "mirrored" and json_window["fail_rate"] == 1.0  # shadow answers feed evals


def test_failing_candidate_is_invisible_to_clients(stack: Stack) -> None:
    stack.configure("candidate", {"set": {"error_rate": 1.0, "error_status": 500}})
    for _ in range(5):
        response = chat(stack)
        assert response.headers["x-gateway-model"] == "primary"
        assert "x-gateway-fallback" not in response.headers
    assert stack.wait_for(lambda: stack.stats("candidate")["models"]["candidate"]["errors"] == 5)
    auth = {"authorization": f"Bearer {TOKEN}"}
    breakers = httpx.get(f"{stack.url}/admin/state", headers=auth).json()["backends"]
    assert all(b["breaker"]["state"] == "closed" for b in breakers)
    assert httpx.get(f"{stack.url}/admin/state", headers=auth).json()["mirror"]["requests"]["candidate/mirrored"] == {
        "error": 5
    }


def test_capture_writes_shadow_records_with_a_size_cap_and_rotation(tmp_path: Any) -> None:
    capture = tmp_path / "pairs.jsonl"
    policy = POLICY.replace("${sample}", "1.0").replace(
        "mirror: {to: [primary, candidate], sample: 1.0}",
        f'mirror: {{to: [candidate], sample: 1.0, capture: {{path: "{capture}", max_bytes: 4000, keep: 2}}}}',
    )
    with Stack(policy, SIMS) as stack:
        stack.configure("primary", {"set": {"output_tokens": 60}})
        stack.configure("candidate", {"set": {"output_tokens": 60}})
        for i in range(12):
            chat(stack, mirror="self", request_id=f"cap-{i}", max_tokens=60)
        assert stack.wait_for(lambda: shadows(stack) == 12)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["pairs.jsonl", "pairs.jsonl.1", "pairs.jsonl.2"]
    assert all((tmp_path / name).stat().st_size <= 4000 for name in files)
    records = [json.loads(line) for line in capture.read_text().splitlines()]
    assert records and records[-1]["request_id"] == "cap-11"
    last = records[-1]
    assert (last["v"], last["kind"], last["content"]) == (1, "shadow", "full")
    assert last["request"]["messages"] == [{"role": "user", "content": "hi"}]
    assert last["outcome"]["model"] == "candidate" and last["outcome"]["cohort"] == "self_mirror"
    assert last["outcome"]["status"] == 200 and last["outcome"]["usage"]["completion_tokens"] == 60
    assert last["shadow"]["reason"] == "mirror" and last["shadow"]["primary_model"] == "primary"
    assert last["shadow"]["agreement"]["finish_reason"] is True
    assert last["answer"]["content"] and last["answer"]["finish_reason"] == "stop"
