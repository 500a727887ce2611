"""LlamaIndex's ``OpenAILike`` (the integration for OpenAI-compatible servers): complete, chat, streams, a tool
call, a structured prediction, and a ``FunctionAgent`` run that ends with an answer."""

from __future__ import annotations

import pytest
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike

from tests.clients.common import (
    ANSWERING_MODELS,
    API_KEY,
    CHAT_MODEL,
    WEATHER_QUESTION,
    WEATHER_REPORT,
    Weather,
    get_weather,
)

HELLO = [ChatMessage(role="system", content="You are a support assistant."), ChatMessage(role="user", content="Hi!")]


@pytest.fixture
def llm(base_url: str) -> OpenAILike:
    """As LlamaIndex documents it for a vLLM-style server: a chat model that can call functions."""
    return OpenAILike(
        model=CHAT_MODEL,
        api_base=base_url,
        api_key=API_KEY,
        is_chat_model=True,
        is_function_calling_model=True,
        context_window=8192,
    )


def test_complete_and_chat(llm: OpenAILike) -> None:
    completion = llm.complete("Say hello to a new customer.")
    assert isinstance(completion, CompletionResponse) and completion.text
    chat = llm.chat(HELLO)
    assert isinstance(chat, ChatResponse) and chat.message.content
    assert chat.raw is not None and chat.raw.model in ANSWERING_MODELS
    assert chat.raw.usage.prompt_tokens > 0
    assert chat.additional_kwargs["prompt_tokens"] == chat.raw.usage.prompt_tokens


def test_stream_chat(llm: OpenAILike) -> None:
    chunks = list(llm.stream_chat(HELLO))
    assert len(chunks) > 1 and chunks[-1].message.content
    assert "".join(c.delta or "" for c in chunks) == chunks[-1].message.content


async def test_async_stream_complete(llm: OpenAILike) -> None:
    text = ""
    async for chunk in await llm.astream_complete("Say hello to a new customer."):
        text = chunk.text
    assert text


def test_a_tool_call(llm: OpenAILike) -> None:
    tool = FunctionTool.from_defaults(fn=get_weather)
    response = llm.chat_with_tools([tool], user_msg=WEATHER_QUESTION)
    calls = llm.get_tool_calls_from_response(response, error_on_no_tool_call=True)
    assert calls[0].tool_name == "get_weather" and isinstance(calls[0].tool_kwargs["city"], str)


def test_structured_predict(llm: OpenAILike) -> None:
    weather = llm.structured_predict(Weather, PromptTemplate("What is the weather in {city}?"), city="Paris")
    assert isinstance(weather, Weather)


async def test_function_agent_ends_with_an_answer(llm: OpenAILike) -> None:
    agent = FunctionAgent(tools=[get_weather], llm=llm, system_prompt="Answer with the get_weather tool.")
    response = await agent.run(user_msg=WEATHER_QUESTION)
    assert [call.tool_name for call in response.tool_calls] == ["get_weather"]
    assert WEATHER_REPORT in str(response)
