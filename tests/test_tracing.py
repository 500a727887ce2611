"""Spans: GenAI + OpenInference attributes on every attempt, fallback siblings, linked mirror traces, OTLP export."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.telemetry.tracing import Tracing
from tests.harness import Stack, free_port, wait_ready

POLICY = """
version: 1
public_models: [assistant]
models:
  merged-v1: {kind: merged, sources: [source-a], backends: ["${merged}"], served_name: merged-served}
  source-a:  {kind: source, backends: ["${src}"]}
  candidate: {kind: candidate, sources: [source-a], backends: ["${cand}"]}
cohorts:
  - {name: mirrored, match: {header: {x-mirror: "yes"}}}
  - {name: general, default: true}
routes:
  general:  {target: merged-v1, fallback: sources}
  mirrored: {target: source-a, mirror: {to: [candidate], sample: 1.0}}
telemetry: {record_content: ${content}}
"""
SIMS = {"merged": ["merged-served"], "src": ["source-a"], "cand": ["candidate"]}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def traced() -> Iterator[tuple[Stack, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    with Stack(POLICY.replace("${content}", "false"), SIMS, tracing=Tracing(SimpleSpanProcessor(exporter))) as stack:
        yield stack, exporter


def spans_of(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    deadline = time.monotonic() + 5
    while len(exporter.get_finished_spans()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return list(exporter.get_finished_spans())


def chat(stack: Stack, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    payload = {"model": "assistant", "messages": [{"role": "user", "content": "secret words"}], "max_tokens": 7}
    response = httpx.post(f"{stack.url}/v1/chat/completions", json={**payload, **body}, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response


def attempt_spans(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time or 0)


def test_non_stream_spans_carry_genai_and_openinference_attributes(traced: tuple[Stack, InMemorySpanExporter]) -> None:
    stack, exporter = traced
    parent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    response = chat(stack, headers={"traceparent": parent}, temperature=0.5, top_p=0.9)
    usage = response.json()["usage"]
    spans = spans_of(exporter, 2)
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    (client,) = attempt_spans(spans)
    assert server.name == "POST /v1/chat/completions"
    assert format(server.context.trace_id, "032x") == TRACE_ID  # the client's traceparent is honored
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert client.name == "chat merged-v1"
    attrs = dict(client.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "vllm"
    assert attrs["gen_ai.request.model"] == "merged-v1"
    assert attrs["gen_ai.response.model"] == "merged-served"
    assert attrs["gateway.requested_model"] == "assistant"
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 7
    assert attrs["llm.token_count.prompt"] == usage["prompt_tokens"]
    assert attrs["llm.token_count.completion"] == 7
    assert attrs["llm.token_count.total"] == usage["total_tokens"]
    assert attrs["gen_ai.response.finish_reasons"] == ("length",)
    assert attrs["gen_ai.request.max_tokens"] == 7
    assert attrs["gen_ai.request.temperature"] == 0.5 and attrs["gen_ai.request.top_p"] == 0.9
    assert attrs["gen_ai.request.stream"] is False
    assert attrs["server.address"] == "127.0.0.1" and isinstance(attrs["server.port"], int)
    assert attrs["gateway.cohort"] == "general" and attrs["gateway.route"] == "general"
    assert attrs["gateway.attempt"] == 1
    assert attrs["gateway.policy.version"] == response.headers["x-gateway-policy-version"]
    assert attrs["gateway.mirror"] is False
    assert attrs["openinference.span.kind"] == "LLM"
    assert attrs["llm.model_name"] == "merged-served" and attrs["llm.response.model_name"] == "merged-served"
    assert attrs["llm.request.model_name"] == "merged-v1" and attrs["llm.provider"] == "vllm"
    assert "gen_ai.prompt" not in attrs and "gen_ai.completion" not in attrs  # privacy by default
    sent = stack.stats("merged")["models"]["merged-served"]["last_headers"]["traceparent"]
    assert sent == f"00-{TRACE_ID}-{client.context.span_id:016x}-01"


def test_stream_tokens_come_from_the_usage_chunk(traced: tuple[Stack, InMemorySpanExporter]) -> None:
    stack, exporter = traced
    body = {"model": "assistant", "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    (client,) = attempt_spans(spans_of(exporter, 2))
    attrs = dict(client.attributes or {})
    assert attrs["gen_ai.request.stream"] is True
    assert attrs["gen_ai.usage.output_tokens"] == 5
    assert attrs["llm.token_count.total"] == attrs["gen_ai.usage.input_tokens"] + 5  # type: ignore[operator]
    assert attrs["gen_ai.response.finish_reasons"] == ("length",)


def test_fallback_attempts_are_sibling_spans(traced: tuple[Stack, InMemorySpanExporter]) -> None:
    stack, exporter = traced
    stack.configure("merged", {"set": {"error_rate": 1.0, "error_status": 503}})
    response = chat(stack)
    assert response.headers["x-gateway-fallback"] == "error:merged-v1"
    spans = spans_of(exporter, 3)
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    first, second = attempt_spans(spans)
    assert {first.parent.span_id, second.parent.span_id} == {server.context.span_id}  # type: ignore[union-attr]
    assert first.name == "chat merged-v1" and second.name == "chat source-a"
    assert first.status.status_code == StatusCode.ERROR
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["error.type"] == "UpstreamStatus"
    assert first.attributes["gateway.attempt"] == 1 and second.attributes["gateway.attempt"] == 2
    assert second.attributes["gateway.fallback.reason"] == "error"
    assert "error.type" not in second.attributes
    assert server.attributes is not None and server.attributes["gateway.fallback.reason"] == "error"


def test_mirror_spans_are_separate_traces_linked_to_the_primary(traced: tuple[Stack, InMemorySpanExporter]) -> None:
    stack, exporter = traced
    chat(stack, headers={"x-mirror": "yes"})
    spans = spans_of(exporter, 3)
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    shadow = next(s for s in spans if (s.attributes or {}).get("gateway.mirror") is True)
    assert shadow.name == "chat candidate"
    assert shadow.context.trace_id != server.context.trace_id
    assert [link.context.span_id for link in shadow.links] == [server.context.span_id]
    assert shadow.attributes is not None and shadow.attributes["gen_ai.usage.output_tokens"] == 7


def test_record_content_opt_in() -> None:
    exporter = InMemorySpanExporter()
    with Stack(POLICY.replace("${content}", "true"), SIMS, tracing=Tracing(SimpleSpanProcessor(exporter))) as stack:
        text = chat(stack).json()["choices"][0]["message"]["content"]
        (client,) = attempt_spans(spans_of(exporter, 2))
    attrs = dict(client.attributes or {})
    assert "secret words" in str(attrs["gen_ai.prompt"])
    assert attrs["gen_ai.completion"] == text


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[ExportTraceServiceRequest] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        _Receiver.received.append(request)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_otlp_http_export_reaches_a_real_receiver() -> None:
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "gw-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--policy", "routing_policies/local.yaml", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        deadline = time.monotonic() + 30
        body = {"model": "support-assistant", "messages": [{"role": "user", "content": "refund"}], "max_tokens": 3}
        assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 200

        def exported() -> list[Any]:
            return [
                (resource, span)
                for request in _Receiver.received
                for resource in request.resource_spans
                for scope in resource.scope_spans
                for span in scope.spans
            ]

        while time.monotonic() < deadline and len(exported()) < 2:
            time.sleep(0.05)
        names = {span.name for _, span in exported()}
        assert {"POST /v1/chat/completions", "chat merged-v1"} <= names
        resource, client = next((r, s) for r, s in exported() if s.name == "chat merged-v1")
        attrs = {a.key: a.value for a in client.attributes}
        assert attrs["gen_ai.request.model"].string_value == "merged-v1"
        assert attrs["gen_ai.usage.output_tokens"].int_value == 3
        service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
        assert service == "gw-under-test"
    finally:
        process.terminate()
        process.wait(10)
        receiver.shutdown()
        receiver.server_close()


def test_gate_transitions_are_span_events() -> None:
    from gateway.policy import parse_policy
    from gateway.runtime import Gateway

    text = POLICY.replace("${content}", "false").replace("${merged}", "http://127.0.0.1:1")
    text = text.replace("${src}", "http://127.0.0.1:2").replace("${cand}", "http://127.0.0.1:3")
    text += (
        "evals:\n  gates: [{models: [merged-v1], cohorts: [general], evaluators: [json_valid], max_fail_rate: 0.1}]\n"
    )
    exporter = InMemorySpanExporter()
    gateway = Gateway(parse_policy(text), tracing=Tracing(SimpleSpanProcessor(exporter)))
    gateway.recorder.gates.trip("merged-v1", "general")
    gateway.recorder.gates.reset("merged-v1", "general")
    tripped, reset = exporter.get_finished_spans()
    assert tripped.name == "eval_gate_tripped" and reset.name == "eval_gate_reset"
    assert [e.name for e in tripped.events] == ["eval_gate_tripped"]
    assert tripped.attributes is not None and tripped.attributes["gateway.model"] == "merged-v1"
    assert tripped.attributes["gateway.gate.reason"] == "tripped by hand"
