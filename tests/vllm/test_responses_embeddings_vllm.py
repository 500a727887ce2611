"""The Responses API and embeddings through the gateway, against real vLLM servers.

``/v1/responses`` goes to the chat servers (the base, its LoRA adapters, the merged checkpoint), ``/v1/embeddings``
to a vLLM pooling server with a tiny BERT encoder. Each answer is checked against what vLLM answers directly
(greedy text and usage; vectors also against the embeddings transformers computed when the model was built), and
the gateway's metrics and spans against the answer's usage. A second gateway, whose first models' backends are a
dead port, shows both endpoints falling back to the real servers before the first byte.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry.tracing import Tracing
from tests.harness import Stack
from tests.vllm.conftest import MERGED_CONTEXT, SOURCES_CONTEXT, render_policy
from tests.vllm.servers import VllmServer, free_port
from tests.vllm.test_gateway_vllm import (
    CASES,
    MAX_TOKENS,
    PUBLIC,
    REFUND,
    Case,
    attempt_spans,
    gateway_client,
    prompt_with_tokens,
)
from tests.vllm.test_gateway_vllm import vllm_client as direct_client

EMBEDDINGS = "support-embeddings"
DIMENSION = 64  # the encoder's hidden size (build_embedder.HIDDEN_SIZE)


def sample(stack: Stack, name: str, **labels: str) -> float:
    """One series of the gateway's /metrics; 0 while it does not exist."""
    for family in text_string_to_metric_families(httpx.get(f"{stack.url}/metrics", timeout=10).text):
        for point in family.samples:
            if point.name == name and point.labels == labels:
                return float(point.value)
    return 0.0


def counts(stack: Stack, cohort: str, route: str, model: str) -> tuple[float, float, float]:
    """(2xx requests, input tokens, output tokens) the gateway counted for ``model`` in ``cohort``."""
    return (
        sample(stack, "llm_gateway_requests_total", cohort=cohort, route=route, model=model, status="2xx"),
        sample(stack, "llm_gateway_tokens_total", type="input", cohort=cohort, model=model),
        sample(stack, "llm_gateway_tokens_total", type="output", cohort=cohort, model=model),
    )


def usage_of(response: Response) -> tuple[int, int, int]:
    assert response.usage is not None
    return response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens


def span_attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def request_id() -> str:
    return f"it-{uuid.uuid4().hex[:12]}"


def respond(stack: Stack, case: Case, rid: str, stream: bool, **params: Any) -> tuple[Response, httpx.Headers | None]:
    """One response through the gateway with the official client: ``responses.create``, or ``responses.stream``
    (then every event that carries the response must name the registry model, and the deltas make the text)."""
    body: dict[str, Any] = {
        "model": PUBLIC,
        "input": case.text,
        "max_output_tokens": MAX_TOKENS,
        "temperature": 0,
        "extra_headers": {"x-request-id": rid, **case.headers},
        **params,
    }
    if case.metadata is not None:
        body["metadata"] = case.metadata
    client = gateway_client(stack)
    if not stream:
        raw = client.responses.with_raw_response.create(**body)
        return raw.parse(), raw.headers
    with client.responses.stream(**body) as events:
        seen = list(events)
        final = events.get_final_response()
    kinds = [event.type for event in seen]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    carried = [event.response.model for event in seen if hasattr(event, "response")]
    assert len(carried) >= 3 and set(carried) == {final.model}, carried  # created, in_progress, completed
    deltas = "".join(event.delta for event in seen if event.type == "response.output_text.delta")
    assert deltas == final.output_text
    return final, None


def direct_response(server: VllmServer, served: str, **params: Any) -> Response:
    return direct_client(server).responses.create(model=served, max_output_tokens=MAX_TOKENS, temperature=0, **params)


# --- /v1/responses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("case", CASES, ids=[case.cohort for case in CASES])
def test_a_response_reaches_its_cohorts_model_with_vllms_usage(
    gateway: Stack, vllm_servers: dict[str, VllmServer], spans: InMemorySpanExporter, case: Case, stream: bool
) -> None:
    server = vllm_servers[case.server]
    direct = direct_response(server, case.served, input=case.text)
    assert direct.model == case.served
    before = counts(gateway, case.cohort, case.cohort, case.model)
    rid = request_id()

    answer, headers = respond(gateway, case, rid, stream)

    if headers is not None:
        assert headers["x-gateway-cohort"] == case.cohort
        assert headers["x-gateway-model"] == case.model
        assert "x-gateway-fallback" not in headers
    assert answer.model == case.model  # the registry name, not vLLM's
    assert answer.output_text == direct.output_text  # greedy: what that vLLM model answers directly
    assert usage_of(answer) == usage_of(direct)
    input_tokens, output_tokens, _ = usage_of(answer)
    assert output_tokens > 0
    after = counts(gateway, case.cohort, case.cohort, case.model)
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (1, input_tokens, output_tokens)

    (span,) = attempt_spans(spans, rid)
    attrs = span_attributes(span)
    assert span.name == f"chat {case.model}"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gateway.cohort"] == case.cohort
    assert attrs["gen_ai.request.model"] == case.model
    assert attrs["gen_ai.response.model"] == case.served  # what vLLM said
    assert attrs["server.port"] == server.port
    assert attrs["gen_ai.request.stream"] is stream
    assert attrs["gen_ai.usage.input_tokens"] == attrs["llm.token_count.prompt"] == input_tokens
    assert attrs["gen_ai.usage.output_tokens"] == attrs["llm.token_count.completion"] == output_tokens


def test_input_items_and_instructions_reach_vllm_as_sent(gateway: Stack, vllm_servers: dict[str, VllmServer]) -> None:
    """``input`` as a list of items with text parts, plus ``instructions``: the cohort is read from the items'
    text, and vLLM gets the request unchanged (same answer, same prompt tokens as asking it directly)."""
    items = [{"role": "user", "content": [{"type": "input_text", "text": REFUND.text}]}]
    params: dict[str, Any] = {"input": items, "instructions": "Answer in one sentence."}
    direct = direct_response(vllm_servers["merged"], "merged-v1", **params)
    answer, headers = respond(gateway, REFUND, request_id(), stream=False, **params)
    assert headers is not None
    assert headers["x-gateway-cohort"] == "billing_refund" and headers["x-gateway-model"] == "merged-v1"
    assert answer.instructions == "Answer in one sentence."
    assert answer.output_text == direct.output_text
    assert usage_of(answer) == usage_of(direct)
    plain = direct_response(vllm_servers["merged"], "merged-v1", input=REFUND.text)
    assert usage_of(answer)[0] > usage_of(plain)[0]  # the instructions were part of the prompt


def test_a_continuation_goes_to_the_server_that_holds_the_conversation(
    gateway: Stack, vllm_servers: dict[str, VllmServer], spans: InMemorySpanExporter
) -> None:
    """vLLM keeps a response in the memory of the server that produced it (``VLLM_ENABLE_RESPONSES_API_STORE``).
    The follow-up's text alone would route it to the base on the other server, which does not know the response;
    the gateway sends it to the merged server that does, and vLLM answers it as it answers the same conversation
    continued directly."""
    weather = CASES[0]  # out_of_domain: the base, on the sources server
    merged = vllm_servers["merged"]
    direct_first = direct_response(merged, "merged-v1", input=REFUND.text)
    direct_follow_up = direct_response(merged, "merged-v1", input=weather.text, previous_response_id=direct_first.id)

    first, _ = respond(gateway, REFUND, request_id(), stream=False)
    assert first.model == "merged-v1"
    rid = request_id()
    follow_up, headers = respond(gateway, weather, rid, stream=False, previous_response_id=first.id)

    assert headers is not None
    assert headers["x-gateway-model"] == "merged-v1" and follow_up.model == "merged-v1"
    assert follow_up.previous_response_id == first.id
    assert follow_up.output_text == direct_follow_up.output_text
    assert usage_of(follow_up) == usage_of(direct_follow_up)
    alone = direct_response(vllm_servers["sources"], "tiny-base", input=weather.text)
    assert usage_of(follow_up)[0] > usage_of(first)[0] + usage_of(alone)[0]  # the first turn is in the prompt
    (span,) = attempt_spans(spans, rid)
    assert span_attributes(span)["server.port"] == merged.port

    with pytest.raises(openai.NotFoundError) as unknown:  # routed as usual; vLLM's 404 passed through
        respond(gateway, weather, request_id(), stream=False, previous_response_id="resp_0123456789abcdef")
    assert "resp_0123456789abcdef" in unknown.value.message


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_response_over_the_merged_context_falls_back_to_the_larger_source(
    gateway: Stack, vllm_servers: dict[str, VllmServer], spans: InMemorySpanExporter, stream: bool
) -> None:
    """vLLM's Responses API refuses a prompt over ``--max-model-len`` as chat does; the gateway reads that 400
    as a context-window error and moves on to the route's model with the larger ``max_context``."""
    text, tokens = prompt_with_tokens(vllm_servers["sources"], "billing-specialist", 700)
    assert MERGED_CONTEXT < tokens < SOURCES_CONTEXT - MAX_TOKENS
    rid = request_id()
    answer, headers = respond(gateway, REFUND, rid, stream, input=text)
    if headers is not None:
        assert headers["x-gateway-model"] == "billing-specialist"
        assert headers["x-gateway-fallback"] == "context_window:merged-v1"
    assert answer.model == "billing-specialist"
    assert usage_of(answer)[0] == tokens
    first, second = attempt_spans(spans, rid, count=2)
    assert span_attributes(first)["gen_ai.request.model"] == "merged-v1"
    assert span_attributes(first).get("error.type") is not None
    assert span_attributes(second)["gateway.fallback.reason"] == "context_window"
    assert span_attributes(second)["gen_ai.usage.input_tokens"] == tokens


# --- /v1/embeddings ------------------------------------------------------------------------------------------


def references(models_dir: Path) -> list[dict[str, Any]]:
    """The texts, token counts and embeddings transformers computed when the encoder was built."""
    loaded: list[dict[str, Any]] = json.loads((models_dir / "embedder" / "reference.json").read_text())
    return loaded


def assert_close(vector: list[float], expected: list[float], tolerance: float = 1e-5) -> None:
    assert len(vector) == len(expected) == DIMENSION
    assert max(abs(a - b) for a, b in zip(vector, expected, strict=True)) < tolerance
    assert math.isclose(math.fsum(v * v for v in vector), 1.0, abs_tol=1e-4)  # normalized (the Normalize module)


@pytest.mark.parametrize(
    ("model", "encoding"), [(EMBEDDINGS, None), ("embedder", "float")], ids=["public-base64", "registry-float"]
)
def test_embeddings_reach_the_pooling_server_with_vllms_vectors_and_usage(
    gateway: Stack,
    vllm_servers: dict[str, VllmServer],
    spans: InMemorySpanExporter,
    models_dir: Path,
    model: str,
    encoding: str | None,
) -> None:
    """By the public name or the registry name, as base64 (what the openai client asks for, and decodes, unless
    told otherwise) or as floats: the vectors are the encoder's, and usage is vLLM's token count ([CLS] and [SEP]
    included)."""
    expected = references(models_dir)
    texts = [entry["text"] for entry in expected]
    server = vllm_servers["embedder"]
    direct = direct_client(server).embeddings.create(model="embedder", input=texts, encoding_format="float")
    before = counts(gateway, "embeddings", "embeddings", "embedder")
    rid = request_id()

    options: dict[str, Any] = {} if encoding is None else {"encoding_format": encoding}
    raw = gateway_client(gateway).embeddings.with_raw_response.create(
        model=model, input=texts, extra_headers={"x-request-id": rid}, **options
    )
    embedded = raw.parse()

    assert raw.headers["x-gateway-cohort"] == "embeddings"
    assert raw.headers["x-gateway-model"] == "embedder"
    assert "x-gateway-fallback" not in raw.headers
    assert embedded.model == "embedder"
    assert [item.index for item in embedded.data] == [0, 1, 2]
    for item, direct_item, reference in zip(embedded.data, direct.data, expected, strict=True):
        assert_close(item.embedding, direct_item.embedding, tolerance=1e-6)
        assert_close(item.embedding, reference["embedding"])
    tokens = sum(entry["tokens"] for entry in expected)
    assert embedded.usage.prompt_tokens == direct.usage.prompt_tokens == tokens
    after = counts(gateway, "embeddings", "embeddings", "embedder")
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (1, tokens, 0)

    (span,) = attempt_spans(spans, rid)
    attrs = span_attributes(span)
    assert span.name == "embeddings embedder"
    assert attrs["gen_ai.operation.name"] == "embeddings"
    assert attrs["gen_ai.request.model"] == "embedder"
    assert attrs["gen_ai.response.model"] == "embedder"
    assert attrs["server.port"] == server.port
    assert attrs["gen_ai.usage.input_tokens"] == attrs["llm.token_count.prompt"] == tokens


def test_chat_models_do_not_serve_embeddings(gateway: Stack) -> None:
    """The chat cohorts' routes have no ``kind: embedding`` model: a clear 400 from the gateway, not vLLM's."""
    with pytest.raises(openai.BadRequestError) as raised:
        gateway_client(gateway).embeddings.create(model=PUBLIC, input=REFUND.text)
    assert raised.value.status_code == 400
    assert "kind: embedding" in raised.value.message


# --- fallback from a dead backend to the real servers --------------------------------------------------------

FALLBACK_POLICY = """
version: 1
public_models: [support-assistant, support-embeddings]
models:
  merged-v1:   {kind: merged, sources: [base], backends: ["${dead}"]}
  base:        {kind: base, backends: ["${sources}"], served_name: tiny-base, max_context: 1024}
  embedder-v2: {kind: embedding, backends: ["${dead}"], served_name: embedder}
  embedder:    {kind: embedding, backends: ["${embedder}"]}
cohorts:
  - {name: embeddings, match: {model: support-embeddings}}
  - {name: support, default: true}
routes:
  embeddings: {target: embedder-v2, fallback: [embedder]}
  support:    {target: merged-v1, fallback: [base]}
health:
  interval_s: 600  # the dead port is found by the requests themselves, not by a health check
  breaker: {consecutive_failures: 100, open_s: 60}
  timeouts: {connect_s: 2, first_byte_s: 60, total_s: 120}
"""


@pytest.fixture(scope="module")
def fallback_spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()  # its own: the gateway shuts its tracer's exporter down when it stops


@pytest.fixture(scope="module")
def fallback_stack(vllm_servers: dict[str, VllmServer], fallback_spans: InMemorySpanExporter) -> Iterator[Stack]:
    policy = render_policy(FALLBACK_POLICY, vllm_servers, dead=f"http://127.0.0.1:{free_port()}")
    with Stack(policy, {}, tracing=Tracing(SimpleSpanProcessor(fallback_spans))) as stack:
        yield stack


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_response_falls_back_from_a_dead_backend_to_vllm(
    fallback_stack: Stack,
    fallback_spans: InMemorySpanExporter,
    vllm_servers: dict[str, VllmServer],
    stream: bool,
) -> None:
    case = Case("support", "base", "tiny-base", "sources", CASES[0].text)
    direct = direct_response(vllm_servers["sources"], "tiny-base", input=case.text)
    before = counts(fallback_stack, "support", "support", "base")
    fallbacks = sample(
        fallback_stack, "llm_gateway_fallbacks_total", reason="error", cohort="support", from_model="merged-v1"
    )
    rid = request_id()

    answer, headers = respond(fallback_stack, case, rid, stream)

    if headers is not None:
        assert headers["x-gateway-model"] == "base"
        assert headers["x-gateway-fallback"] == "error:merged-v1"
    assert answer.model == "base"
    assert answer.output_text == direct.output_text
    assert usage_of(answer) == usage_of(direct)
    input_tokens, output_tokens, _ = usage_of(answer)
    after = counts(fallback_stack, "support", "support", "base")
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (1, input_tokens, output_tokens)
    assert (
        sample(fallback_stack, "llm_gateway_fallbacks_total", reason="error", cohort="support", from_model="merged-v1")
        == fallbacks + 1
    )
    dead, served = attempt_spans(fallback_spans, rid, count=2)
    assert span_attributes(dead)["gen_ai.request.model"] == "merged-v1"
    assert span_attributes(dead).get("error.type") is not None
    assert span_attributes(dead).get("gen_ai.usage.input_tokens") is None
    attrs = span_attributes(served)
    assert attrs["gen_ai.request.model"] == "base" and attrs["gen_ai.response.model"] == "tiny-base"
    assert attrs["gateway.fallback.reason"] == "error"
    assert attrs["gen_ai.usage.input_tokens"] == input_tokens
    assert attrs["gen_ai.usage.output_tokens"] == output_tokens


def test_embeddings_fall_back_from_a_dead_backend_to_vllm(
    fallback_stack: Stack, fallback_spans: InMemorySpanExporter, models_dir: Path
) -> None:
    expected = references(models_dir)
    rid = request_id()
    raw = gateway_client(fallback_stack).embeddings.with_raw_response.create(
        model=EMBEDDINGS, input=[entry["text"] for entry in expected], extra_headers={"x-request-id": rid}
    )
    embedded = raw.parse()
    assert raw.headers["x-gateway-cohort"] == "embeddings"
    assert raw.headers["x-gateway-model"] == "embedder"
    assert raw.headers["x-gateway-fallback"] == "error:embedder-v2"
    assert embedded.model == "embedder"
    for item, reference in zip(embedded.data, expected, strict=True):
        assert_close(item.embedding, reference["embedding"])
    tokens = sum(entry["tokens"] for entry in expected)
    assert embedded.usage.prompt_tokens == tokens
    assert counts(fallback_stack, "embeddings", "embeddings", "embedder")[:2] == (1, tokens)
    dead, served = attempt_spans(fallback_spans, rid, count=2)
    assert span_attributes(dead)["gen_ai.request.model"] == "embedder-v2"
    assert span_attributes(dead).get("error.type") is not None
    assert span_attributes(served)["gen_ai.usage.input_tokens"] == tokens
