"""The official ``openai`` SDK, configured by OPENAI_BASE_URL and OPENAI_API_KEY alone: sync and async clients,
streams, ``parse``, tools, model lookup, the Responses API and embeddings. Runs in both client environments (the
SDK's 3.x and 2.x lines)."""

from __future__ import annotations

import json

import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types import CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam, ParsedChatCompletion
from openai.types.responses import Response, ResponseFunctionToolCall, ResponseInputParam

from tests.clients.common import (
    ANSWERING_MODELS,
    CHAT_MODEL,
    CHAT_WEATHER_TOOL,
    EMBEDDING_MODEL,
    RESPONSES_WEATHER_TOOL,
    TOOL_MODELS,
    WEATHER_QUESTION,
    WEATHER_REPORT,
    Weather,
    check_gateway_headers,
    cosine,
    schema_prompt,
)

HELLO: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a support assistant."},
    {"role": "user", "content": "Say hello to a new customer."},
]


@pytest.fixture
def client(gateway_url: str) -> OpenAI:
    return OpenAI()


@pytest.fixture
def async_client(gateway_url: str) -> AsyncOpenAI:
    return AsyncOpenAI()


def test_sync_chat_has_text_usage_headers_and_request_id(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=HELLO)
    check_gateway_headers(raw.headers)
    completion = raw.parse()
    assert isinstance(completion, ChatCompletion)
    assert completion.model == raw.headers["x-gateway-model"]
    assert completion._request_id == raw.headers["x-request-id"]
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_sampling_fields_n_seed_stop_logprobs(client: OpenAI) -> None:
    two = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, n=2, seed=7, max_tokens=12)
    assert [c.index for c in two.choices] == [0, 1]
    again = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, n=2, seed=7, max_tokens=12)
    assert [c.message.content for c in again.choices] == [c.message.content for c in two.choices]
    words = (two.choices[0].message.content or "").split()
    assert len(words) >= 3, words
    stopped = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, seed=7, max_tokens=12, stop=[words[2]])
    assert stopped.choices[0].finish_reason == "stop"
    assert words[2] not in (stopped.choices[0].message.content or "").split()
    scored = client.chat.completions.create(
        model=CHAT_MODEL, messages=HELLO, logprobs=True, top_logprobs=2, max_tokens=5
    )
    logprobs = scored.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in logprobs.content)


def test_sync_stream_has_every_chunk_and_the_usage(client: OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model=CHAT_MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    ) as raw:
        check_gateway_headers(raw.headers)
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert {c.model for c in chunks} <= ANSWERING_MODELS
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_stream_helper_accumulates_the_answer(client: OpenAI) -> None:
    with client.chat.completions.stream(model=CHAT_MODEL, messages=HELLO) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    assert deltas and "".join(deltas) == final.choices[0].message.content


async def test_async_chat_and_stream(async_client: AsyncOpenAI) -> None:
    completion = await async_client.chat.completions.create(model=CHAT_MODEL, messages=HELLO)
    assert completion.choices[0].message.content and completion.model in ANSWERING_MODELS
    stream = await async_client.chat.completions.create(
        model=CHAT_MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
    await async_client.close()


def test_parse_with_a_pydantic_response_format(client: OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        response_format=Weather,
    )
    assert isinstance(completion, ParsedChatCompletion)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Weather)


def test_json_object_answer_follows_the_schema_in_the_prompt(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": schema_prompt(Weather, "What is the weather in Paris?")}],
        response_format={"type": "json_object"},
    )
    Weather.model_validate_json(completion.choices[0].message.content or "")


def test_tool_call_then_final_answer(client: OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": WEATHER_QUESTION}]
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=messages, tools=[CHAT_WEATHER_TOOL]
    )
    check_gateway_headers(raw.headers, models=TOOL_MODELS)
    assert raw.headers["x-gateway-cohort"] == "tool_required"
    first = raw.parse()
    assert first.choices[0].finish_reason == "tool_calls"
    calls = first.choices[0].message.tool_calls
    assert calls and calls[0].type == "function" and calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": WEATHER_REPORT})
    final = client.chat.completions.create(model=CHAT_MODEL, messages=messages, tools=[CHAT_WEATHER_TOOL])
    assert final.choices[0].finish_reason == "stop"
    assert not final.choices[0].message.tool_calls
    assert WEATHER_REPORT in (final.choices[0].message.content or "")


def test_parse_with_a_strict_pydantic_tool(client: OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Report the weather in Paris."}],
        tools=[openai.pydantic_function_tool(Weather)],
        tool_choice="required",
    )
    calls = completion.choices[0].message.tool_calls
    assert calls and isinstance(calls[0].function.parsed_arguments, Weather)


def test_completions(client: OpenAI) -> None:
    completion = client.completions.create(model=CHAT_MODEL, prompt="Once upon a time", max_tokens=8)
    assert completion.choices[0].text and completion.usage is not None and completion.usage.completion_tokens > 0


def test_models_list_and_retrieve(client: OpenAI) -> None:
    listed = [m.id for m in client.models.list()]
    assert listed[0] == CHAT_MODEL and EMBEDDING_MODEL in listed
    model = client.models.retrieve(CHAT_MODEL)
    assert isinstance(model, Model) and model.id == CHAT_MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_responses_create(client: OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model=CHAT_MODEL, instructions="You are a support assistant.", input="Say hello to a new customer."
    )
    check_gateway_headers(raw.headers)
    response = raw.parse()
    assert isinstance(response, Response)
    assert response.status == "completed" and response.output_text
    assert response.model == raw.headers["x-gateway-model"]
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0


def test_responses_stream(client: OpenAI) -> None:
    with client.responses.stream(model=CHAT_MODEL, input="Say hello to a new customer.") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas and deltas == final.output_text
    assert final.model in ANSWERING_MODELS
    assert final.usage is not None and final.usage.output_tokens > 0


def test_responses_function_tool_loop_ends_with_an_answer(client: OpenAI) -> None:
    history: ResponseInputParam = [{"role": "user", "content": WEATHER_QUESTION}]
    first = client.responses.create(model=CHAT_MODEL, input=history, tools=[RESPONSES_WEATHER_TOOL])
    calls = [item for item in first.output if isinstance(item, ResponseFunctionToolCall)]
    assert calls and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": calls[0].call_id, "output": WEATHER_REPORT})
    final = client.responses.create(model=CHAT_MODEL, input=history, tools=[RESPONSES_WEATHER_TOOL])
    assert not [item for item in final.output if item.type == "function_call"]
    assert WEATHER_REPORT in final.output_text


def test_responses_parse_with_a_pydantic_text_format(client: OpenAI) -> None:
    response = client.responses.parse(model=CHAT_MODEL, input="What is the weather in Paris?", text_format=Weather)
    assert isinstance(response.output_parsed, Weather)


def test_embeddings(client: OpenAI) -> None:
    texts = ["I was charged twice for my order", "charged twice on my card", "what is the weather in Paris"]
    raw = client.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input=texts)
    check_gateway_headers(raw.headers, models=frozenset({EMBEDDING_MODEL}))
    result = raw.parse()  # the SDK asks for base64 and decodes it
    assert isinstance(result, CreateEmbeddingResponse)
    assert result.model == EMBEDDING_MODEL and [d.index for d in result.data] == [0, 1, 2]
    vectors = [d.embedding for d in result.data]
    assert len({len(v) for v in vectors}) == 1 and all(isinstance(x, float) for x in vectors[0])
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert result.usage.prompt_tokens > 0
    short = client.embeddings.create(model=EMBEDDING_MODEL, input="hello", dimensions=32, encoding_format="float")
    assert len(short.data[0].embedding) == 32
