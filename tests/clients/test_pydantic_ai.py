"""``pydantic-ai`` with its default ``openai:`` model (the Responses API): a plain run, a tool, a typed output, a
stream. Every run must end with an answer inside the default limits."""

from __future__ import annotations

import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import ModelResponse, ToolCallPart, ToolReturnPart
from pydantic_ai.models.openai import OpenAIResponsesModel

from tests.clients.common import CHAT_MODEL, WEATHER_QUESTION, WEATHER_REPORT, Weather, get_weather

MODEL = f"openai:{CHAT_MODEL}"


@pytest.fixture(autouse=True)
def _gateway(gateway_url: str) -> None:
    """OPENAI_BASE_URL and OPENAI_API_KEY are set: pydantic-ai's OpenAI provider reads them."""


def test_the_default_openai_model_is_the_responses_api() -> None:
    agent = Agent(MODEL, instructions="You are a support assistant.")
    assert isinstance(agent.model, OpenAIResponsesModel)
    result = agent.run_sync("Say hello to a new customer.")
    assert isinstance(result.output, str) and result.output
    usage = result.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0 and usage.requests == 1
    response = result.all_messages()[-1]
    assert isinstance(response, ModelResponse) and response.model_name == "base"


def test_a_tool_then_the_final_answer() -> None:
    agent = Agent(MODEL, instructions="Answer weather questions with the get_weather tool.")
    agent.tool_plain(get_weather)
    result = agent.run_sync(WEATHER_QUESTION)
    parts = [part for message in result.all_messages() for part in message.parts]
    assert [p.tool_name for p in parts if isinstance(p, ToolCallPart)] == ["get_weather"]
    assert [p.tool_name for p in parts if isinstance(p, ToolReturnPart)] == ["get_weather"]
    assert isinstance(result.output, str) and WEATHER_REPORT in result.output
    assert result.usage.requests == 2


def test_a_typed_output() -> None:
    agent = Agent(MODEL, output_type=Weather, instructions="Report the weather.")
    result = agent.run_sync("What is the weather in Paris?")
    assert isinstance(result.output, Weather)
    assert result.usage.requests == 1


def test_a_tool_and_a_typed_output() -> None:
    agent = Agent(MODEL, output_type=Weather, instructions="Look the weather up with get_weather, then report it.")
    agent.tool_plain(get_weather)
    result = agent.run_sync(WEATHER_QUESTION)
    parts = [part for message in result.all_messages() for part in message.parts]
    assert "get_weather" in [p.tool_name for p in parts if isinstance(p, ToolReturnPart)]
    assert isinstance(result.output, Weather)


async def test_stream_text() -> None:
    agent = Agent(MODEL)
    async with agent.run_stream("Say hello to a new customer.") as result:
        pieces = [piece async for piece in result.stream_text(delta=True, debounce_by=None)]
    assert len(pieces) > 1 and "".join(pieces)
    assert result.usage.output_tokens > 0
