"""``langchain-openai``'s ``ChatOpenAI`` (Chat Completions, and the Responses API when asked): invoke, stream,
``bind_tools`` through to a final answer, and ``with_structured_output`` in each of its methods."""

from __future__ import annotations

from typing import Literal

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_openai import ChatOpenAI

from tests.clients.common import (
    ANSWERING_MODELS,
    API_KEY,
    CHAT_MODEL,
    TOOL_MODELS,
    WEATHER_QUESTION,
    WEATHER_REPORT,
    Weather,
    check_gateway_headers,
    get_weather,
    schema_prompt,
)

HELLO = [SystemMessage("You are a support assistant."), HumanMessage("Say hello to a new customer.")]


def chat_model(base_url: str, *, responses: bool = False) -> ChatOpenAI:
    return ChatOpenAI(
        model=CHAT_MODEL,
        base_url=base_url,
        api_key=API_KEY,
        include_response_headers=True,
        stream_usage=True,  # off by default with a custom base_url; the gateway sends usage in streams
        use_responses_api=responses,
    )


def check_usage(message: AIMessage) -> None:
    usage = message.usage_metadata
    assert usage is not None and usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
def test_invoke(base_url: str, responses: bool) -> None:
    answer = chat_model(base_url, responses=responses).invoke(HELLO)
    assert isinstance(answer, AIMessage) and answer.text
    check_usage(answer)
    check_gateway_headers(answer.response_metadata["headers"])
    assert answer.response_metadata["model_name"] in ANSWERING_MODELS


@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
def test_stream(base_url: str, responses: bool) -> None:
    chunks = list(chat_model(base_url, responses=responses).stream(HELLO))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.text
    check_usage(merged)


async def test_async_invoke_and_stream(base_url: str) -> None:
    model = chat_model(base_url)
    answer = await model.ainvoke(HELLO)
    assert answer.text
    text = "".join([chunk.text async for chunk in model.astream(HELLO)])
    assert text


@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
def test_bind_tools_runs_to_a_final_answer(base_url: str, responses: bool) -> None:
    """The agent loop a user writes by hand: call the tools the model asks for until it answers in text."""
    model = chat_model(base_url, responses=responses).bind_tools([get_weather])
    messages: list[BaseMessage] = [HumanMessage(WEATHER_QUESTION)]
    for _ in range(5):
        answer = model.invoke(messages)
        assert isinstance(answer, AIMessage)
        check_gateway_headers(answer.response_metadata["headers"], models=TOOL_MODELS)
        messages.append(answer)
        if not answer.tool_calls:
            break
        for call in answer.tool_calls:
            assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
            messages.append(ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"]))
    assert isinstance(messages[-1], AIMessage) and not messages[-1].tool_calls, "no final answer in 5 turns"
    assert len(messages) == 4  # question, tool call, tool result, answer
    assert WEATHER_REPORT in messages[-1].text


Method = Literal["function_calling", "json_mode", "json_schema"]


@pytest.mark.parametrize("method", ["function_calling", "json_mode", "json_schema"])
@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
def test_with_structured_output(base_url: str, method: Method, responses: bool) -> None:
    # json_mode sends only {"type": "json_object"}: LangChain's documentation has the prompt describe the schema.
    question = "What is the weather in Paris?"
    prompt = schema_prompt(Weather, question) if method == "json_mode" else question
    structured = chat_model(base_url, responses=responses).with_structured_output(
        Weather, method=method, include_raw=True
    )
    result = structured.invoke(prompt)
    assert isinstance(result, dict) and result["parsing_error"] is None
    assert isinstance(result["parsed"], Weather)
    check_usage(result["raw"])
