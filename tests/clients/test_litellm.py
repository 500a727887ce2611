"""LiteLLM as a client (the SDK, not its proxy) through its ``openai/`` provider with ``api_base``: completion
(sync, async, stream), tools to a final answer, a Pydantic response format, the Responses API, embeddings."""

from __future__ import annotations

import json

import litellm
import pytest
from litellm import EmbeddingResponse, ModelResponse
from litellm.types.llms.openai import ResponsesAPIResponse

from tests.clients.common import (
    API_KEY,
    CHAT_MODEL,
    CHAT_WEATHER_TOOL,
    EMBEDDING_MODEL,
    TOOL_MODELS,
    WEATHER_QUESTION,
    WEATHER_REPORT,
    Weather,
    check_gateway_headers,
    cosine,
)

MODEL = f"openai/{CHAT_MODEL}"
HELLO = [{"role": "user", "content": "Say hello to a new customer."}]


@pytest.fixture
def gateway(base_url: str) -> dict[str, str]:
    """The arguments LiteLLM's documentation gives for an OpenAI-compatible server."""
    return {"api_base": base_url, "api_key": API_KEY}


def response_headers(response: object) -> dict[str, str]:
    """The upstream headers LiteLLM keeps, under their own names (it also prefixes them ``llm_provider-``)."""
    headers = getattr(response, "_hidden_params", {}).get("additional_headers") or {}
    return {k.removeprefix("llm_provider-"): v for k, v in headers.items() if k.startswith("llm_provider-")}


def test_completion(gateway: dict[str, str]) -> None:
    response = litellm.completion(model=MODEL, messages=HELLO, **gateway)
    assert isinstance(response, ModelResponse)
    assert response.choices[0].message.content
    usage = response.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    check_gateway_headers(response_headers(response))


async def test_async_completion_and_stream(gateway: dict[str, str]) -> None:
    response = await litellm.acompletion(model=MODEL, messages=HELLO, **gateway)
    assert response.choices[0].message.content
    stream = await litellm.acompletion(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}, **gateway
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    rebuilt = litellm.stream_chunk_builder(chunks, messages=HELLO)
    assert rebuilt is not None and rebuilt.choices[0].message.content == text
    assert rebuilt.usage.completion_tokens > 0


def test_sync_stream(gateway: dict[str, str]) -> None:
    chunks = list(litellm.completion(model=MODEL, messages=HELLO, stream=True, **gateway))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_tools_to_a_final_answer(gateway: dict[str, str]) -> None:
    messages: list[dict[str, object]] = [{"role": "user", "content": WEATHER_QUESTION}]
    first = litellm.completion(model=MODEL, messages=messages, tools=[CHAT_WEATHER_TOOL], **gateway)
    check_gateway_headers(response_headers(first), models=TOOL_MODELS)
    message = first.choices[0].message
    calls = message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)
    messages.append(message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": WEATHER_REPORT})
    final = litellm.completion(model=MODEL, messages=messages, tools=[CHAT_WEATHER_TOOL], **gateway)
    assert not final.choices[0].message.tool_calls
    assert WEATHER_REPORT in (final.choices[0].message.content or "")


def test_pydantic_response_format(gateway: dict[str, str]) -> None:
    response = litellm.completion(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        response_format=Weather,
        **gateway,
    )
    Weather.model_validate_json(response.choices[0].message.content or "")


def test_responses_api(gateway: dict[str, str]) -> None:
    response = litellm.responses(model=MODEL, input="Say hello to a new customer.", **gateway)
    assert isinstance(response, ResponsesAPIResponse)
    text = "".join(part.text for item in response.output if item.type == "message" for part in item.content)
    assert text
    assert response.usage is not None and response.usage.input_tokens > 0


def test_embedding(gateway: dict[str, str]) -> None:
    texts = ["I was charged twice for my order", "charged twice on my card", "what is the weather in Paris"]
    response = litellm.embedding(model=f"openai/{EMBEDDING_MODEL}", input=texts, **gateway)
    assert isinstance(response, EmbeddingResponse)
    vectors = [item["embedding"] for item in response.data]
    assert len(vectors) == 3 and cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert response.usage is not None and response.usage.prompt_tokens > 0
