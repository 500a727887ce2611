"""``/v1/responses``, ``/v1/embeddings`` and ``GET /v1/models/{id}`` through a running gateway, with the official
``openai`` client: routed by cohort, falling back, continued on the backend that holds the conversation, and
counted in the metrics like chat."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.harness import Stack

TOKEN = "responses-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
POLICY = """
version: 1
public_models: [assistant]
models:
  merged-v1: {kind: merged, sources: [source-a], backends: ["${m1}", "${m2}"]}
  source-a:  {kind: source, backends: ["${src}"]}
  embedder:  {kind: embedding, backends: ["${emb}"]}
cohorts:
  - {name: billing, match: {content: "(?i)refund"}}
  - {name: chat, default: true}
routes:
  billing: {target: merged-v1, fallback: sources, mirror: {to: [source-a], sample: 1.0}}
  chat: {target: source-a}
"""
SIMS = {"m1": ["merged-v1"], "m2": ["merged-v1"], "src": ["source-a"], "emb": ["embedder"]}


@pytest.fixture(scope="module")
def module_stack() -> Iterator[Stack]:
    os.environ["GATEWAY_ADMIN_TOKEN"] = TOKEN
    try:
        with Stack(POLICY, SIMS) as stack:
            yield stack
    finally:
        del os.environ["GATEWAY_ADMIN_TOKEN"]


@pytest.fixture
def stack(module_stack: Stack) -> Iterator[Stack]:
    module_stack.reset()
    yield module_stack


def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)


def metric(stack: Stack, prefix: str) -> float:
    for line in httpx.get(f"{stack.url}/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def responses_to(stack: Stack, sim: str, model: str) -> int:
    counts = stack.stats(sim)["models"][model]
    return int(counts.get("responses", counts["requests"]))


def test_a_response_is_routed_by_its_input_and_instructions_and_named_by_the_registry(stack: Stack) -> None:
    raw = client(stack).responses.with_raw_response.create(
        model="assistant", instructions="You help with billing.", input="I want a refund for order 7"
    )
    response = raw.parse()
    assert raw.headers["x-gateway-cohort"] == "billing"
    assert raw.headers["x-gateway-model"] == "merged-v1" and response.model == "merged-v1"
    assert response.output_text and response.usage is not None and response.usage.output_tokens > 0
    items = [{"role": "user", "content": [{"type": "input_text", "text": "hello there"}]}]
    plain = client(stack).responses.with_raw_response.create(model="assistant", input=items)
    assert plain.headers["x-gateway-cohort"] == "chat" and plain.parse().model == "source-a"
    tokens = metric(stack, 'llm_gateway_tokens_total{cohort="billing",model="merged-v1",type="output"}')
    assert tokens >= response.usage.output_tokens


def test_a_streamed_response_names_the_registry_model_in_every_event_and_counts_its_usage(stack: Stack) -> None:
    before = metric(
        stack, 'llm_gateway_requests_total{cohort="billing",model="merged-v1",route="billing",status="2xx"}'
    )
    with client(stack).responses.stream(model="assistant", input="a refund please") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    models = [e.response.model for e in events if hasattr(e, "response")]
    assert models and set(models) == {"merged-v1"}
    assert final.model == "merged-v1" and final.usage is not None
    after = metric(stack, 'llm_gateway_requests_total{cohort="billing",model="merged-v1",route="billing",status="2xx"}')
    assert after == before + 1
    output = metric(stack, 'llm_gateway_tokens_total{cohort="billing",model="merged-v1",type="output"}')
    assert output >= final.usage.output_tokens


def test_a_failing_backend_falls_back_before_the_first_byte(stack: Stack) -> None:
    for sim in ("m1", "m2"):
        stack.configure(sim, {"set": {"error_rate": 1.0, "error_status": 500}})
    raw = client(stack).responses.with_raw_response.create(model="assistant", input="refund my order")
    assert raw.headers["x-gateway-model"] == "source-a"
    assert raw.headers["x-gateway-fallback"] == "error:merged-v1"
    with client(stack).responses.stream(model="assistant", input="refund my order") as stream:
        assert stream.get_final_response().model == "source-a"


def test_a_continuation_goes_to_the_backend_that_holds_the_conversation(stack: Stack) -> None:
    first = client(stack).responses.create(model="assistant", input="refund: my order 12 arrived broken")
    holder = "m1" if responses_to(stack, "m1", "merged-v1") else "m2"
    other = "m2" if holder == "m1" else "m1"
    for turn in range(6):
        answer = client(stack).responses.create(
            model="assistant", input=f"refund: and one more thing {turn}", previous_response_id=first.id
        )
        assert answer.model == "merged-v1"
    assert responses_to(stack, holder, "merged-v1") == 7 and responses_to(stack, other, "merged-v1") == 0
    state = httpx.get(f"{stack.url}/admin/state", headers=AUTH).json()
    index = next(
        i
        for i, b in enumerate(b for b in state["backends"] if b["model"] == "merged-v1")
        if b["url"] == stack.sim_url(holder)
    )
    drained = httpx.post(f"{stack.url}/admin/backends/merged-v1/{index}", json={"action": "drain"}, headers=AUTH)
    assert drained.status_code == 200
    try:
        with pytest.raises(openai.ConflictError) as gone:
            client(stack).responses.create(model="assistant", input="refund?", previous_response_id=first.id)
        assert gone.value.code == "previous_response_unavailable"
    finally:
        httpx.post(f"{stack.url}/admin/backends/merged-v1/{index}", json={"action": "restore"}, headers=AUTH)


def test_embeddings_go_to_embedding_models_only_and_are_counted(stack: Stack) -> None:
    raw = client(stack).embeddings.with_raw_response.create(model="embedder", input=["refund twice", "the weather"])
    embedded = raw.parse()
    assert raw.headers["x-gateway-model"] == "embedder" and embedded.model == "embedder"
    assert len(embedded.data) == 2 and len(embedded.data[0].embedding) > 10
    assert embedded.usage.prompt_tokens > 0
    input_tokens = metric(stack, 'llm_gateway_tokens_total{cohort="billing",model="embedder",type="input"}')
    assert input_tokens == embedded.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as chat_model:
        client(stack).embeddings.create(model="source-a", input="hello")
    assert "is kind: source: it serves no /v1/embeddings" in chat_model.value.message
    with pytest.raises(openai.BadRequestError) as embedding_model:
        client(stack).chat.completions.create(model="embedder", messages=[{"role": "user", "content": "hi"}])
    assert "is kind: embedding: it serves /v1/embeddings only" in embedding_model.value.message
    bad = httpx.post(f"{stack.url}/v1/embeddings", json={"model": "embedder", "input": [1, "a"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"


def test_models_can_be_retrieved_one_by_one(stack: Stack) -> None:
    assert client(stack).models.retrieve("assistant").id == "assistant"
    assert client(stack).models.retrieve("embedder").id == "embedder"
    with pytest.raises(openai.NotFoundError) as missing:
        client(stack).models.retrieve("gpt-7")
    assert missing.value.code == "model_not_found"


def test_a_mirrored_response_is_evaluated_as_a_response(stack: Stack) -> None:
    ok = 'llm_gateway_mirror_requests_total{cohort="billing",model="source-a",outcome="ok"}'
    before = metric(stack, ok)
    client(stack).responses.create(
        model="assistant", input="a refund, and answer in JSON", text={"format": {"type": "json_object"}}
    )
    assert stack.wait_for(lambda: metric(stack, ok) == before + 1)

    def judged() -> bool:
        windows = httpx.get(f"{stack.url}/admin/state", headers=AUTH).json()["evals"]["windows"]
        return any(
            (w["model"], w["cohort"], w["evaluator"]) == ("source-a", "billing", "json_valid") and w["outcomes"] > 0
            for w in windows
        )

    assert stack.wait_for(judged)  # the shadow's JSON was read from the Responses output, not chat's choices
