"""``instructor`` over the ``openai`` client: a typed answer in TOOLS mode (a forced function call) and in JSON
mode (``json_object`` with the schema in the system prompt), sync and async, with the completion's usage."""

from __future__ import annotations

import instructor
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletion

from tests.clients.common import CHAT_MODEL, Weather

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON], ids=["tools", "json"])
def test_typed_answer(gateway_url: str, mode: instructor.Mode) -> None:
    client = instructor.from_openai(OpenAI(), mode=mode)
    weather, completion = client.chat.completions.create_with_completion(
        model=CHAT_MODEL, response_model=Weather, messages=QUESTION, max_retries=0
    )
    assert isinstance(weather, Weather)
    assert isinstance(completion, ChatCompletion)
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert completion._request_id


@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON], ids=["tools", "json"])
async def test_typed_answer_async(gateway_url: str, mode: instructor.Mode) -> None:
    client = instructor.from_openai(AsyncOpenAI(), mode=mode)
    weather = await client.chat.completions.create(
        model=CHAT_MODEL, response_model=Weather, messages=QUESTION, max_retries=0
    )
    assert isinstance(weather, Weather)


def test_a_list_of_typed_answers(gateway_url: str) -> None:
    client = instructor.from_openai(OpenAI(), mode=instructor.Mode.TOOLS)
    reports = client.chat.completions.create(
        model=CHAT_MODEL,
        response_model=list[Weather],
        messages=[{"role": "user", "content": "The weather in Paris and in Oslo?"}],
        max_retries=0,
    )
    assert isinstance(reports, list) and all(isinstance(r, Weather) for r in reports)
