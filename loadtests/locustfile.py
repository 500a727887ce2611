"""Locust users for load-testing your own deployment: chat completions across cohorts, streamed and not.

    pip install -e '.[bench]'          # or just: pip install locust
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 --headless -u 50 -r 10 -t 5m

Two users, both picked by default (pass class names to run one): ``ChatUser`` sends non-streamed chat
completions, ``StreamingChatUser`` streamed ones and reports each stream twice: its time to the first chunk
(request type ``TTFT``) and the whole stream (``STREAM``), so Locust's tables and charts show time-to-first-token
percentiles next to request latency. Each user waits 0.5-2 s between requests, like a person; for a closed-loop
capacity test, subclass them with ``wait_time = constant(0)``.

The requests are written to land in the cohorts of ``routing_policies/example.yaml`` and are named after them:
``billing_refund`` (a refund question, and the ``x-topic: billing`` header rule), ``tool_required`` (a request
offering a tool), ``structured_output`` (``response_format: json_object``) and ``out_of_domain`` (anything else).
With another policy the names are only labels; the cohort the gateway chose is in each answer's
``x-gateway-cohort`` header and in its metrics.

Environment: ``LOCUST_MODEL`` (the public model name; default ``support-assistant``), ``LOCUST_API_KEY`` (sent as
``Authorization: Bearer``, for a policy with ``keys``), ``LOCUST_MAX_TOKENS`` (default 64).
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import requests
from locust import FastHttpUser, HttpUser, between, task

MODEL = os.environ.get("LOCUST_MODEL", "support-assistant")
API_KEY = os.environ.get("LOCUST_API_KEY", "")
MAX_TOKENS = int(os.environ.get("LOCUST_MAX_TOKENS", "64"))

REFUNDS = [
    "I was charged twice for order {n}, please refund the second charge.",
    "How long does a refund take to reach my card? Order {n}.",
    "There is a chargeback on my account for order {n}, what happened?",
]
QUESTIONS = [
    "Do you ship to Norway, and how long does delivery take?",
    "Can I change the size of a sweater I ordered yesterday?",
    "What are your opening hours on public holidays?",
]
LOOKUP_ORDER = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Look an order up by its number.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}},
            "required": ["order_id"],
        },
    },
}


def _chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": MAX_TOKENS, **extra}


def requests_by_cohort() -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """One request (body, extra headers) per cohort of ``routing_policies/example.yaml``, with fresh numbers."""
    n = random.randint(1000, 99999)
    return {
        "billing_refund": (_chat(random.choice(REFUNDS).format(n=n)), {}),
        "billing_refund (header)": (_chat(f"Question about invoice {n}."), {"x-topic": "billing"}),
        "tool_required": (_chat(f"Where is order {n}?", tools=[LOOKUP_ORDER]), {}),
        "structured_output": (
            _chat(f"Give order {n}'s status as JSON.", response_format={"type": "json_object"}),
            {},
        ),
        "out_of_domain": (_chat(random.choice(QUESTIONS)), {}),
    }


WEIGHTS = {
    "billing_refund": 3,
    "billing_refund (header)": 1,
    "tool_required": 2,
    "structured_output": 2,
    "out_of_domain": 3,
}
"""How often each cohort's request is sent, relative to the others."""


def _headers(extra: dict[str, str]) -> dict[str, str]:
    headers = {"content-type": "application/json", **extra}
    if API_KEY:
        headers["authorization"] = f"Bearer {API_KEY}"
    return headers


def _pick() -> tuple[str, dict[str, Any], dict[str, str]]:
    cohort = random.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
    body, headers = requests_by_cohort()[cohort]
    return cohort, body, headers


class ChatUser(FastHttpUser):
    """Non-streamed chat completions across the cohorts; an answer counts as failed unless it is a 200 with a
    choice in it."""

    wait_time = between(0.5, 2.0)

    @task
    def chat(self) -> None:
        cohort, body, headers = _pick()
        with self.client.post(
            "/v1/chat/completions", json=body, headers=_headers(headers), name=f"chat {cohort}", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif not (response.json() or {}).get("choices"):
                response.failure("an answer without choices")


class StreamingChatUser(HttpUser):
    """Streamed chat completions across the cohorts. Locust's own timing of a streamed request stops at the
    headers, so this user times the stream itself and reports ``TTFT`` (first ``data:`` chunk) and ``STREAM``
    (through ``data: [DONE]``) events; a stream that breaks or never says ``[DONE]`` is a failure."""

    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.session = requests.Session()

    def on_stop(self) -> None:
        self.session.close()

    @task
    def stream(self) -> None:
        cohort, body, headers = _pick()
        body = {**body, "stream": True}
        started = time.perf_counter()
        first: float | None = None
        size = 0
        error: Exception | None = None
        try:
            with self.session.post(
                f"{self.host}/v1/chat/completions", data=json.dumps(body), headers=_headers(headers), stream=True
            ) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
                done = False
                for line in response.iter_lines():
                    size += len(line)
                    if line.startswith(b"data:"):
                        first = first or time.perf_counter()
                        done = done or line.strip() == b"data: [DONE]"
                if not done:
                    raise RuntimeError("the stream ended without data: [DONE]")
        except (requests.RequestException, RuntimeError) as exc:
            error = exc
        ended = time.perf_counter()
        fire = self.environment.events.request.fire
        if first is not None:
            ttft_ms = (first - started) * 1000
            fire(request_type="TTFT", name=cohort, response_time=ttft_ms, response_length=0, exception=None)
        fire(
            request_type="STREAM",
            name=cohort,
            response_time=(ended - started) * 1000,
            response_length=size,
            exception=error,
        )
