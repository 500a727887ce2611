"""The OpenAI Agents SDK (``openai-agents``) with its default model provider (the Responses API), the model named
by OPENAI_DEFAULT_MODEL: a plain run, a function tool, a typed output, a stream, a continued conversation. Each
run must end with a final answer within the default ``max_turns``. Tracing export is off (no network here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from agents import (
    Agent,
    ItemHelpers,
    MessageOutputItem,
    Runner,
    ToolCallItem,
    ToolCallOutputItem,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)
from agents.models.openai_responses import OpenAIResponsesModel
from openai import AsyncOpenAI

from tests.clients.common import API_KEY, CHAT_MODEL, WEATHER_QUESTION, WEATHER_REPORT, Weather, get_weather

set_tracing_disabled(True)
weather_tool = function_tool(get_weather)


@pytest.fixture(autouse=True)
def default_model(base_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Agents built without ``model=`` use OPENAI_DEFAULT_MODEL through the default OpenAI provider, whose client
    is set as the SDK documents for another OpenAI-compatible server (one per test: each test has its own event
    loop, and a client's connections belong to the loop that opened them)."""
    monkeypatch.setenv("OPENAI_DEFAULT_MODEL", CHAT_MODEL)
    set_default_openai_client(AsyncOpenAI(base_url=base_url, api_key=API_KEY), use_for_tracing=False)
    yield


def test_the_default_model_answers() -> None:
    agent = Agent(name="support", instructions="You are a support assistant.")
    result = Runner.run_sync(agent, "Say hello to a new customer.")
    assert isinstance(result.final_output, str) and result.final_output
    assert len(result.raw_responses) == 1
    usage = result.context_wrapper.usage
    assert usage.requests == 1 and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_the_default_provider_uses_the_responses_api() -> None:
    from agents.models.multi_provider import MultiProvider

    model = MultiProvider().get_model(None)
    assert isinstance(model, OpenAIResponsesModel) and model.model == CHAT_MODEL


def test_a_function_tool_then_a_final_answer() -> None:
    agent = Agent(name="weather", instructions="Answer with the get_weather tool.", tools=[weather_tool])
    result = Runner.run_sync(agent, WEATHER_QUESTION)
    kinds = [type(item) for item in result.new_items]
    assert kinds == [ToolCallItem, ToolCallOutputItem, MessageOutputItem]
    assert WEATHER_REPORT in result.final_output
    assert result.context_wrapper.usage.requests == 2


def test_a_typed_output() -> None:
    agent = Agent(name="reporter", instructions="Report the weather.", output_type=Weather)
    result = Runner.run_sync(agent, "What is the weather in Paris?")
    assert isinstance(result.final_output, Weather)


def test_a_tool_and_a_typed_output() -> None:
    agent = Agent(
        name="reporter", instructions="Look the weather up, then report it.", tools=[weather_tool], output_type=Weather
    )
    result = Runner.run_sync(agent, WEATHER_QUESTION)
    assert any(isinstance(item, ToolCallOutputItem) for item in result.new_items)
    assert isinstance(result.final_output, Weather)


async def test_a_streamed_run_with_a_tool() -> None:
    agent = Agent(name="weather", instructions="Answer with the get_weather tool.", tools=[weather_tool])
    result = Runner.run_streamed(agent, WEATHER_QUESTION)
    deltas = []
    async for event in result.stream_events():
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            deltas.append(event.data.delta)
    assert result.is_complete and WEATHER_REPORT in result.final_output
    assert "".join(deltas) == result.final_output
    assert result.context_wrapper.usage.requests == 2


async def test_a_conversation_continued_by_previous_response_id() -> None:
    agent = Agent(name="support", instructions="You are a support assistant.")
    first = await Runner.run(agent, "My order number is 4411.")
    assert first.last_response_id
    second = await Runner.run(agent, "What was my order number?", previous_response_id=first.last_response_id)
    assert second.final_output and second.last_response_id != first.last_response_id
    text = ItemHelpers.text_message_outputs(second.new_items)
    assert text == second.final_output
    assert second.raw_responses[0].usage.input_tokens > first.raw_responses[0].usage.input_tokens
