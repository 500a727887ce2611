"""A client that goes away: its backend request is cancelled, streamed or not, and what it used is still charged."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import Stack

KEY = "sk-metered-1"
POLICY = f"""
version: 1
public_models: [assistant]
models:
  base: {{kind: base, backends: ["${{base}}"]}}
cohorts:
  - {{name: general, default: true}}
routes:
  general: {{target: base}}
keys:
  metered:
    key: sha256:{hashlib.sha256(KEY.encode()).hexdigest()}
    rate_limit: {{tokens_per_min: 100}}
"""
HEADERS = {"authorization": f"Bearer {KEY}"}


@pytest.fixture
def stack() -> Iterator[Stack]:
    with Stack(POLICY, {"base": ["base"]}) as stack:
        yield stack


def chat(stream: bool) -> dict[str, object]:
    return {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def test_a_client_gone_from_a_non_streamed_request_cancels_the_backend_request(stack: Stack) -> None:
    stack.configure("base", {"set": {"ttft_s": 3.0}})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{stack.url}/v1/chat/completions", json=chat(False), headers=HEADERS, timeout=0.5)
    assert stack.wait_for(lambda: stack.stats("base")["models"]["base"]["cancelled"] == 1, timeout=2)
    assert stack.stats("base")["models"]["base"]["completed"] == 0
    state = httpx.get(f"{stack.url}/metrics").text
    assert "llm_gateway_inflight_requests 0.0" in state


def test_a_stream_abandoned_before_its_usage_chunk_is_still_charged(stack: Stack) -> None:
    stack.configure("base", {"set": {"ttft_s": 0.0, "per_token_s": 0.005, "output_tokens": 400}})
    with httpx.stream(
        "POST", f"{stack.url}/v1/chat/completions", json=chat(True), headers=HEADERS, timeout=10
    ) as response:
        assert response.status_code == 200
        events = 0
        for line in response.iter_lines():
            events += line.startswith("data: {")
            if events >= 150:  # 150 chunks relayed: over the key's 100 tokens a minute, usage chunk never read
                break
    assert stack.wait_for(lambda: stack.stats("base")["models"]["base"]["cancelled"] == 1, timeout=2)
    answer = httpx.post(f"{stack.url}/v1/chat/completions", json=chat(False), headers=HEADERS, timeout=5)
    assert answer.status_code == 429, answer.text
    assert "tokens per minute" in answer.json()["error"]["message"]
