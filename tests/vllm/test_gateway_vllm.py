"""The gateway in front of real vLLM servers: a merged checkpoint next to its LoRA source models and their base.

The tiny models write gibberish, so no test reads text for meaning. They check what a rollout relies on: which
model answered (``x-gateway-model``, the body's ``model``, and vLLM's own answer name on the attempt span), that
usage and span token counts are vLLM's own (greedy answers through the gateway are token for token vLLM's direct
answers, with ``return_token_ids``), tool calls, context-window fallback, eval gates and fallback when a server stops.

The tests run in file order and share two vLLM servers; the last one stops the merged server.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Stack
from tests.vllm.conftest import ADMIN_TOKEN, MERGED_CONTEXT, POLICY, SOURCES_CONTEXT, render_policy
from tests.vllm.servers import VllmServer, free_port

PUBLIC = "support-assistant"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
MAX_TOKENS = 12


@dataclass(frozen=True)
class Case:
    cohort: str
    model: str  # registry name: x-gateway-model and the body's model
    served: str  # what vLLM answers in `model` (the LoRA adapter's name for an adapter)
    server: str
    text: str
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] | None = None


CASES = [
    Case("out_of_domain", "base", "tiny-base", "sources", "What is the weather like today?"),
    Case("billing_refund", "merged-v1", "merged-v1", "merged", "I want a refund for order 4411."),
    Case(
        "policy_exception", "merged-v1", "merged-v1", "merged", "Can you bend the rules?", metadata={"queue": "policy"}
    ),
    Case(
        "billing_dispute",
        "billing-specialist",
        "billing-specialist",
        "sources",
        "This charge is wrong.",
        {"x-topic": "dispute"},
    ),
    Case(
        "policy_review",
        "policy-specialist",
        "policy-specialist",
        "sources",
        "Review my case.",
        metadata={"queue": "review"},
    ),
]
REFUND = CASES[1]
POLICY_EXCEPTION = CASES[2]

INVOICE_SCHEMA = {
    "type": "object",
    "properties": {
        "reason": {"type": "string", "enum": ["refund", "chargeback"]},
        "urgent": {"type": "boolean"},
    },
    "required": ["reason", "urgent"],
    "additionalProperties": False,
}
INVOICE_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_invoice",
        "description": "Fetch an invoice and open a refund or chargeback case.",
        "strict": True,
        "parameters": INVOICE_SCHEMA,
    },
}


def gateway_client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120)


def vllm_client(server: VllmServer) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def extra_body(case: Case, **more: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"return_token_ids": True, **more}
    if case.metadata is not None:
        body["metadata"] = case.metadata
    return body


def admin_state(stack: Stack) -> dict[str, Any]:
    response = httpx.get(f"{stack.url}/admin/state", headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


def attempt_spans(exporter: InMemorySpanExporter, request_id: str, count: int = 1) -> list[ReadableSpan]:
    """The attempt (CLIENT) spans under the SERVER span of request ``request_id``, oldest first."""
    deadline = time.monotonic() + 10
    while True:
        spans = exporter.get_finished_spans()
        server = [
            s
            for s in spans
            if s.kind == SpanKind.SERVER and (s.attributes or {}).get("gateway.request_id") == request_id
        ]
        attempts = [
            s
            for s in spans
            if s.kind == SpanKind.CLIENT
            and server
            and s.parent is not None
            and s.parent.span_id == server[0].context.span_id
        ]
        if (server and len(attempts) >= count) or time.monotonic() > deadline:
            return sorted(attempts, key=lambda s: s.start_time or 0)
        time.sleep(0.05)


@dataclass
class Reply:
    headers: httpx.Headers
    models: set[str]
    token_ids: list[int]
    prompt_token_ids: list[int]
    usage: dict[str, int]
    message: dict[str, Any]
    finish_reason: str | None


def read_reply(raw: Any, stream: bool) -> Reply:
    """One answer through the gateway as a :class:`Reply`; a stream is assembled from its chunks."""
    if not stream:
        completion = raw.parse()
        choice = completion.choices[0]
        extra = choice.model_extra or {}
        return Reply(
            headers=raw.headers,
            models={completion.model},
            token_ids=list(extra.get("token_ids") or []),
            prompt_token_ids=list((completion.model_extra or {}).get("prompt_token_ids") or []),
            usage=completion.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}),
            message=choice.message.model_dump(exclude_none=True),
            finish_reason=choice.finish_reason,
        )
    models: set[str] = set()
    token_ids: list[int] = []
    prompt_token_ids: list[int] = []
    usage: dict[str, int] = {}
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish_reason = None
    for chunk in raw.parse():
        models.add(chunk.model)
        prompt_token_ids += (chunk.model_extra or {}).get("prompt_token_ids") or []
        if chunk.usage is not None:
            usage = chunk.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
        for choice in chunk.choices:
            token_ids += (choice.model_extra or {}).get("token_ids") or []
            prompt_token_ids += (choice.model_extra or {}).get("prompt_token_ids") or []
            finish_reason = choice.finish_reason or finish_reason
            content.append(choice.delta.content or "")
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    message: dict[str, Any] = {"content": "".join(content)}
    if calls:
        message["tool_calls"] = [{"function": calls[i]} for i in sorted(calls)]
    return Reply(raw.headers, models, token_ids, prompt_token_ids, usage, message, finish_reason)


def ask(stack: Stack, case: Case, *, stream: bool = False, text: str | None = None, **params: Any) -> tuple[str, Reply]:
    request_id = f"it-{uuid.uuid4().hex[:12]}"
    kwargs: dict[str, Any] = {"max_tokens": MAX_TOKENS, "temperature": 0, **params}
    if stream:
        kwargs["stream_options"] = {"include_usage": True}
    raw = gateway_client(stack).chat.completions.with_raw_response.create(
        model=PUBLIC,
        messages=messages(text or case.text),
        stream=stream,
        extra_headers={"x-request-id": request_id, **case.headers},
        extra_body=extra_body(case),
        **kwargs,
    )
    return request_id, read_reply(raw, stream)


def tokenize(server: VllmServer, model: str, text: str) -> int:
    response = httpx.post(f"{server.url}/tokenize", json={"model": model, "messages": messages(text)}, timeout=30)
    assert response.status_code == 200, response.text
    count: int = response.json()["count"]
    return count


def prompt_with_tokens(server: VllmServer, model: str, tokens: int) -> tuple[str, int]:
    """A refund question of about ``tokens`` prompt tokens (chat template included), and its exact count."""
    short, long = tokenize(server, model, "refund " * 10), tokenize(server, model, "refund " * 110)
    per_word = (long - short) / 100
    words = max(1, round(10 + (tokens - short) / per_word))
    text = "refund " * words
    return text, tokenize(server, model, text)


# --- routing, usage and spans --------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("case", CASES, ids=[case.cohort for case in CASES])
def test_each_cohort_reaches_its_model(
    gateway: Stack, vllm_servers: dict[str, VllmServer], spans: InMemorySpanExporter, case: Case, stream: bool
) -> None:
    direct = vllm_client(vllm_servers[case.server]).chat.completions.create(
        model=case.served,
        messages=messages(case.text),  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    assert direct.model == case.served
    expected_tokens = list((direct.choices[0].model_extra or {})["token_ids"])
    assert direct.usage is not None
    expected_usage = direct.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})

    request_id, reply = ask(gateway, case, stream=stream)

    assert reply.headers["x-gateway-cohort"] == case.cohort
    assert reply.headers["x-gateway-model"] == case.model
    assert "x-gateway-fallback" not in reply.headers
    assert reply.models == {case.model}  # every chunk names the registry model, not vLLM's name
    assert reply.token_ids == expected_tokens  # greedy: token for token what that vLLM model answers directly
    assert reply.usage == expected_usage  # vLLM's own usage, passed through (streams: the usage chunk)
    assert len(reply.prompt_token_ids) == reply.usage["prompt_tokens"]
    assert len(reply.token_ids) == reply.usage["completion_tokens"]

    (span,) = attempt_spans(spans, request_id)
    attrs = dict(span.attributes or {})
    assert span.name == f"chat {case.model}"
    assert attrs["gen_ai.request.model"] == case.model
    assert attrs["gen_ai.response.model"] == case.served  # what vLLM said: the adapter's name for a LoRA model
    assert attrs["server.port"] == vllm_servers[case.server].port
    assert attrs["gen_ai.usage.input_tokens"] == attrs["llm.token_count.prompt"] == expected_usage["prompt_tokens"]
    assert (
        attrs["gen_ai.usage.output_tokens"]
        == attrs["llm.token_count.completion"]
        == expected_usage["completion_tokens"]
    )
    assert attrs["llm.token_count.total"] == expected_usage["total_tokens"]
    assert attrs["gen_ai.request.stream"] is stream
    assert attrs["gateway.cohort"] == case.cohort


def test_stream_without_include_usage_drops_the_usage_chunk(gateway: Stack, spans: InMemorySpanExporter) -> None:
    """The gateway always asks vLLM for usage (for its spans and metrics) but a client that did not ask gets none."""
    request_id = f"it-{uuid.uuid4().hex[:12]}"
    stream = gateway_client(gateway).chat.completions.create(
        model=PUBLIC,
        messages=messages(REFUND.text),  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        extra_headers={"x-request-id": request_id},
    )
    chunks = list(stream)
    assert chunks and all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason in {"length", "stop"}
    (span,) = attempt_spans(spans, request_id)
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["llm.token_count.total"] == attrs["gen_ai.usage.input_tokens"] + attrs["gen_ai.usage.output_tokens"]


# --- tools ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_tool_required_gets_a_valid_strict_tool_call(gateway: Stack, stream: bool) -> None:
    """A strict tool, named in ``tool_choice``: vLLM constrains the call to the tool's schema, and the random model
    closes it within ~90 tokens. (With ``tool_choice: required`` vLLM lets the model append further calls until
    ``max_tokens``, which a random model rarely stops doing; sampling, with a seed, keeps greedy decoding from
    spending every token on the whitespace JSON allows.)"""
    case = Case("tool_required", "merged-v1", "merged-v1", "merged", "Open a refund case for my last invoice.")
    before, _ = eval_window(gateway, "merged-v1", "tool_required", "tool_call_valid")
    _, reply = ask(
        gateway,
        case,
        stream=stream,
        max_tokens=200,
        temperature=1.0,
        seed=7,
        tools=[INVOICE_TOOL],
        tool_choice={"type": "function", "function": {"name": "lookup_invoice"}},
    )
    assert reply.headers["x-gateway-cohort"] == "tool_required"
    assert reply.headers["x-gateway-model"] == "merged-v1"
    calls = reply.message.get("tool_calls", [])
    assert len(calls) == 1, reply.message
    assert calls[0]["function"]["name"] == "lookup_invoice"
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), INVOICE_SCHEMA)
    assert reply.usage["completion_tokens"] < 200  # the call was closed, not cut off
    # the gateway's own tool_call_valid evaluator judged the answer valid too
    assert wait_for(lambda: eval_window(gateway, "merged-v1", "tool_required", "tool_call_valid")[0] == before + 1)
    assert eval_window(gateway, "merged-v1", "tool_required", "tool_call_valid")[1] == 0.0


# --- context window ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_prompt_over_the_merged_context_falls_back_to_the_larger_source(
    gateway: Stack, vllm_servers: dict[str, VllmServer], spans: InMemorySpanExporter, stream: bool
) -> None:
    text, tokens = prompt_with_tokens(vllm_servers["sources"], "billing-specialist", 700)
    assert MERGED_CONTEXT < tokens < SOURCES_CONTEXT - MAX_TOKENS
    request_id, reply = ask(gateway, REFUND, stream=stream, text=text)
    assert reply.headers["x-gateway-cohort"] == "billing_refund"
    assert reply.headers["x-gateway-model"] == "billing-specialist"
    assert reply.headers["x-gateway-fallback"] == "context_window:merged-v1"
    assert reply.usage["prompt_tokens"] == tokens
    first, second = attempt_spans(spans, request_id, count=2)
    assert dict(first.attributes or {})["gen_ai.request.model"] == "merged-v1"
    assert dict(first.attributes or {}).get("error.type") is not None
    assert dict(second.attributes or {})["gen_ai.response.model"] == "billing-specialist"
    assert dict(second.attributes or {})["gen_ai.usage.input_tokens"] == tokens


def test_prompt_over_every_context_gets_vllms_400(
    gateway: Stack, vllm_servers: dict[str, VllmServer], spans: InMemorySpanExporter
) -> None:
    text, tokens = prompt_with_tokens(vllm_servers["sources"], "billing-specialist", SOURCES_CONTEXT + 100)
    assert tokens > SOURCES_CONTEXT
    request_id = f"it-{uuid.uuid4().hex[:12]}"
    with pytest.raises(openai.BadRequestError) as raised:
        gateway_client(gateway).chat.completions.create(
            model=PUBLIC,
            messages=messages(text),  # type: ignore[arg-type]
            max_tokens=MAX_TOKENS,
            extra_headers={"x-request-id": request_id},
        )
    assert raised.value.status_code == 400
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["param"] == "input_tokens"  # vLLM's own error, passed through unchanged
    assert f"maximum context length is {SOURCES_CONTEXT} tokens" in error["message"]  # from the larger model
    attempts = attempt_spans(spans, request_id, count=2)
    assert [dict(s.attributes or {})["gen_ai.request.model"] for s in attempts] == ["merged-v1", "billing-specialist"]


# --- eval gates ----------------------------------------------------------------------------------------------


def eval_window(stack: Stack, model: str, cohort: str, evaluator: str) -> tuple[int, float]:
    for window in admin_state(stack)["evals"]["windows"]:
        if (window["model"], window["cohort"], window["evaluator"]) == (model, cohort, evaluator):
            return int(window["outcomes"]), float(window["fail_rate"])
    return 0, 0.0


def gate(stack: Stack, model: str, cohort: str) -> dict[str, Any]:
    for entry in admin_state(stack)["evals"]["gates"]:
        if (entry["model"], entry["cohort"]) == (model, cohort):
            return dict(entry)
    raise AssertionError(f"no gate for {model}/{cohort}")


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_invalid_json_from_the_merged_model_trips_its_gate_for_that_cohort_only(gateway: Stack) -> None:
    """json_object requests to the random merged model: vLLM constrains the start of the answer to JSON, but the
    model rambles and runs out of tokens, so many answers are not valid JSON. The gate takes merged-v1 off the
    ``structured`` cohort only; ``billing_refund`` keeps it."""
    structured = Case("structured", "merged-v1", "merged-v1", "merged", "")
    assert gate(gateway, "merged-v1", "structured")["tripped"] is False
    answered: list[bool] = []  # per merged-v1 answer: valid JSON?
    tripped_reply = None
    for seed in range(40):
        _, reply = ask(
            gateway,
            structured,
            text=f"Summarize ticket {seed} as JSON.",
            temperature=1.0,
            seed=seed,
            max_tokens=16,
            response_format={"type": "json_object"},
        )
        assert reply.headers["x-gateway-cohort"] == "structured"
        if reply.headers["x-gateway-model"] != "merged-v1":
            tripped_reply = reply
            break
        answered.append(is_json(reply.message.get("content", "")))
        # outcomes are recorded after the answer went out: wait so the next request sees the gate's verdict
        assert wait_for(lambda: eval_window(gateway, "merged-v1", "structured", "json_valid")[0] == len(answered))
    assert tripped_reply is not None, f"gate never tripped: {answered.count(False)} of {len(answered)} invalid"
    assert tripped_reply.headers["x-gateway-model"] == "policy-specialist"
    assert tripped_reply.headers["x-gateway-fallback"] == "eval:merged-v1"
    invalid = answered.count(False)
    assert len(answered) >= 10  # min_samples
    assert invalid / len(answered) > 0.3  # max_fail_rate: the gateway judged the real answers
    assert eval_window(gateway, "merged-v1", "structured", "json_valid") == (
        len(answered),
        round(invalid / len(answered), 4),
    )
    assert gate(gateway, "merged-v1", "structured")["tripped"] is True
    assert gate(gateway, "merged-v1", "billing_refund")["tripped"] is False
    _, refund = ask(gateway, REFUND)
    assert refund.headers["x-gateway-model"] == "merged-v1"  # the merged model keeps its other cohorts
    assert "x-gateway-fallback" not in refund.headers

    reset = httpx.post(f"{gateway.url}/admin/gates/merged-v1/structured", json={"action": "reset"}, headers=ADMIN)
    assert reset.status_code == 200, reset.text
    _, after = ask(
        gateway, structured, text="Summarize as JSON.", max_tokens=4, response_format={"type": "json_object"}
    )
    assert after.headers["x-gateway-model"] == "merged-v1"


# --- the gateway as a process --------------------------------------------------------------------------------


def test_llm_gateway_serve_process_routes_to_vllm(vllm_servers: dict[str, VllmServer], tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(render_policy(POLICY, vllm_servers))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--policy",
            str(policy),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: ready(url), timeout=30), "gateway did not become ready"
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        raw = client.chat.completions.with_raw_response.create(
            model=PUBLIC,
            messages=messages("Please review my case."),  # type: ignore[arg-type]
            max_tokens=MAX_TOKENS,
            extra_body={"metadata": {"queue": "review"}},
        )
        completion = raw.parse()
        assert raw.headers["x-gateway-model"] == "policy-specialist"
        assert completion.model == "policy-specialist"
        assert completion.usage is not None
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        output_tokens = [
            sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
            if sample.name == "llm_gateway_tokens_total"
            and sample.labels == {"type": "output", "cohort": "policy_review", "model": "policy-specialist"}
        ]
        assert output_tokens == [completion.usage.completion_tokens]
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly
    assert process.returncode in (0, -signal.SIGTERM), output.decode(errors="replace")


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- load-aware balancing on vLLM's own /metrics -------------------------------------------------------------

BALANCE_POLICY = """
version: 1
public_models: [support-assistant]
models:
  billing-specialist: {kind: source, backends: ["${sources}"]}
  merged-v1: {kind: merged, sources: [billing-specialist], backends: ["${merged}", "sim://replica"]}
cohorts:
  - {name: all, default: true}
routes:
  all: {target: merged-v1}
health:
  interval_s: 0.25
  check_timeout_s: 10
  scrape_load: true
"""


@pytest.fixture
def balance_stack(vllm_servers: dict[str, VllmServer], monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """merged-v1 with two replicas: the real vLLM server, and a simulated one inside the gateway process."""
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
    with Stack(render_policy(BALANCE_POLICY, vllm_servers), {}) as stack:
        yield stack


def merged_backend(stack: Stack, url: str) -> dict[str, Any]:
    (backend,) = [b for b in admin_state(stack)["backends"] if b["url"] == url]
    return dict(backend)


def sim_requests(stack: Stack) -> int:
    assert stack.gateway is not None
    stats = httpx.get(f"{stack.gateway.sims['replica'].url}/sim/stats", timeout=5).json()
    return int(stats["models"].get("merged-v1", {}).get("requests", 0))


class BackgroundLoad:
    """Long requests sent straight to one vLLM server, behind the gateway's back, each re-sent as it finishes,
    until the ``with`` block ends. Not streamed: that costs vLLM's API server the least."""

    def __init__(self, server: VllmServer, model: str, requests: int, max_tokens: int) -> None:
        self.body = {"model": model, "messages": messages("x"), "max_tokens": max_tokens, "ignore_eos": True}
        self.url = f"{server.url}/v1/chat/completions"
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(requests)]

    def __enter__(self) -> BackgroundLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = httpx.post(self.url, json=self.body, timeout=120)
            except httpx.TransportError:
                time.sleep(0.1)  # a connection the server closed: the load goes on
                continue
            if response.status_code != 200:
                self.errors.append(f"{response.status_code} {response.text}")
                return


def raw_queue(server: VllmServer) -> tuple[float, float]:
    """(waiting, running) straight from the server's /metrics."""
    values = {"waiting": 0.0, "running": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics", timeout=30).text):
        for sample in family.samples:
            for key in values:
                if sample.name == f"vllm:num_requests_{key}":
                    values[key] += sample.value
    return values["waiting"], values["running"]


@contextlib.contextmanager
def frozen_queue(
    server: VllmServer, model: str, requests: int, min_running: int, min_waiting: int = 0
) -> Iterator[tuple[float, float]]:
    """A real queue on ``server``, held still: ``requests`` long requests sent to it directly, then its engine frozen
    at a moment vLLM reports at least ``min_running`` running and ``min_waiting`` waiting. Yields what vLLM's
    /metrics then say, ``(waiting, running)``; thawed on exit.

    On 2 busy cores vLLM's API server falls behind its engine and answers ``/metrics`` only seconds later, when the
    queue may be gone; frozen, the queue stays put and the API server answers at once."""
    with BackgroundLoad(server, model, requests=requests, max_tokens=480) as load:
        queue = (0.0, 0.0)
        for _ in range(60):
            time.sleep(0.2)
            server.freeze_engine()
            queue = raw_queue(server)
            if queue[1] >= min_running and queue[0] >= min_waiting:
                break
            server.thaw_engine()
        else:
            raise AssertionError(f"vLLM never reported {min_running} running, {min_waiting} waiting: last {queue}")
        try:
            yield queue
        finally:
            server.thaw_engine()
    assert load.errors == []


def test_balancing_reads_vllms_waiting_queue(balance_stack: Stack, vllm_servers: dict[str, VllmServer]) -> None:
    """Requests sent to vLLM behind the gateway's back fill its queue (it runs 2 sequences at a time); the gateway
    knows of that queue only through vLLM's /metrics, and sends its own requests to the idle replica until the
    queue is gone."""
    merged = vllm_servers["merged"]
    client = gateway_client(balance_stack)
    scraped: dict[str, Any] = {}

    def scrape() -> dict[str, Any]:
        scraped.update(merged_backend(balance_stack, merged.url))
        return scraped

    with frozen_queue(merged, "merged-v1", requests=6, min_running=2, min_waiting=1) as (waiting, running):
        assert running == 2  # --max-num-seqs 2
        # the gateway's view of the replica is exactly what vLLM's /metrics say
        assert wait_for(lambda: (scrape()["vllm_waiting"], scraped["vllm_running"]) == (waiting, running), 30), scraped
        assert scraped["healthy"] is True
        assert scraped["inflight"] == 0  # the gateway itself sent nothing there: it knows only from /metrics
        before = sim_requests(balance_stack)
        for _ in range(6):
            completion = client.chat.completions.create(model=PUBLIC, messages=messages("hi"), max_tokens=4)  # type: ignore[arg-type]
            assert completion.model == "merged-v1"
        assert sim_requests(balance_stack) - before == 6  # all to the replica with the empty queue
    assert wait_for(lambda: scrape()["vllm_waiting"] == 0 and scraped["vllm_running"] == 0, timeout=60), scraped
    before = sim_requests(balance_stack)
    for _ in range(16):
        client.chat.completions.create(model=PUBLIC, messages=messages("hi"), max_tokens=4)  # type: ignore[arg-type]
    assert sim_requests(balance_stack) - before < 16  # with the queue empty, vLLM gets its share again


def test_lora_backends_see_their_servers_queue(gateway: Stack, vllm_servers: dict[str, VllmServer]) -> None:
    """vLLM labels its queue gauges with the base model's name only; the adapters' backends share that engine, so
    the gateway counts the server's whole queue for them too."""
    sources = vllm_servers["sources"]
    seen: dict[str, dict[str, Any]] = {}

    with frozen_queue(sources, "policy-specialist", requests=3, min_running=1) as (_, running):

        def busy() -> bool:
            seen.update({b["model"]: b for b in admin_state(gateway)["backends"] if b["url"] == sources.url})
            return bool(seen) and all(backend["vllm_running"] == running for backend in seen.values())

        assert wait_for(busy, timeout=30), seen
    assert set(seen) == {"base", "billing-specialist", "policy-specialist"}


# --- a merged server that stops (keep last: the merged server does not come back) ----------------------------


@dataclass
class Outcome:
    case: Case
    started: float
    ended: float
    model: str = ""
    fallback: str | None = None
    error: str | None = None


def test_stopping_the_merged_server_moves_its_cohorts_to_their_sources(
    gateway: Stack, vllm_servers: dict[str, VllmServer]
) -> None:
    sources = {REFUND.cohort: "billing-specialist", POLICY_EXCEPTION.cohort: "policy-specialist"}
    outcomes: list[Outcome] = []
    stop = threading.Event()
    lock = threading.Lock()

    def traffic(case: Case) -> None:
        client = gateway_client(gateway)
        while not stop.is_set():
            outcome = Outcome(case, started=time.monotonic(), ended=0.0)
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=PUBLIC,
                    messages=messages(case.text),  # type: ignore[arg-type]
                    max_tokens=32,
                    extra_headers=case.headers,
                    extra_body=extra_body(case),
                )
                completion = raw.parse()
                outcome.model = raw.headers["x-gateway-model"]
                outcome.fallback = raw.headers.get("x-gateway-fallback")
                assert completion.model == outcome.model
            except Exception as exc:  # every failure is reported below
                outcome.error = repr(exc)
            outcome.ended = time.monotonic()
            with lock:
                outcomes.append(outcome)

    def count(cohort: str, after: float = 0.0) -> int:
        with lock:
            return sum(1 for o in outcomes if o.case.cohort == cohort and o.started > after)

    threads = [threading.Thread(target=traffic, args=(case,)) for case in (REFUND, POLICY_EXCEPTION)]
    for thread in threads:
        thread.start()
    try:
        assert wait_for(lambda: all(count(c) >= 3 for c in sources), timeout=60)
        stopping = time.monotonic()
        # SIGTERM, then SIGKILL after 5 s: vLLM's HTTP server waits for its open requests after the engine stopped
        vllm_servers["merged"].stop(timeout_s=5)
        stopped = time.monotonic()
        assert not vllm_servers["merged"].running
        assert wait_for(lambda: all(count(c, after=stopped) >= 5 for c in sources), timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)

    assert [o for o in outcomes if o.error is not None] == []  # no failed request, during or after the stop
    before = [o for o in outcomes if o.ended < stopping]
    after = [o for o in outcomes if o.started > stopped]
    assert before and all(o.model == "merged-v1" and o.fallback is None for o in before)
    for o in after:
        assert o.model == sources[o.case.cohort], o
        assert o.fallback is not None and o.fallback.split(":") in (
            ["error", "merged-v1"],
            ["breaker", "merged-v1"],
            ["unhealthy", "merged-v1"],
        ), o
    in_flight = [o for o in outcomes if o.started <= stopped and o.ended >= stopping]
    assert all(o.model in {"merged-v1", sources[o.case.cohort]} for o in in_flight)
    fallbacks = [o.fallback for o in sorted(outcomes, key=lambda o: o.started) if o.fallback]
    assert fallbacks[0] == "error:merged-v1"  # the first requests found the server gone before health checks did

    # streams, after the stop, fall back before their first byte and stream from the source
    for case in (REFUND, POLICY_EXCEPTION):
        _, reply = ask(gateway, case, stream=True)
        assert reply.headers["x-gateway-model"] == sources[case.cohort]
        assert reply.headers["x-gateway-fallback"].endswith(":merged-v1")
        assert reply.usage["completion_tokens"] == len(reply.token_ids) > 0
    assert wait_for(lambda: not merged_backend(gateway, vllm_servers["merged"].url)["healthy"], timeout=15)
    assert ready(gateway.url)  # the sources still serve
