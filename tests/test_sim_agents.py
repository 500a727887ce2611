"""What agent frameworks and structured-output libraries need from the simulator: tool loops that end once the
tool's result is in the conversation, and ``json_object`` answers that follow the JSON Schema (or example) the
prompt shows, as instructor's JSON mode and langchain's ``json_mode`` put it there.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import pydantic
import pytest
from openai import AsyncOpenAI

from gateway.sim import ModelProfile, SimProfile, SimServer
from gateway.sim.prompt_schema import find_schema
from gateway.sim.schema_instance import instance

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
FINAL = {
    "type": "function",
    "function": {
        "name": "final_result",
        "parameters": {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]},
    },
}
ASK = {"role": "user", "content": "what is the weather in Paris"}


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = SimServer(["base"], SimProfile(default=ModelProfile(output_tokens=8)))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(sim: SimServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0, timeout=5) as c:
        yield c


async def _turn(client: AsyncOpenAI, messages: list[Any], **extra: Any) -> Any:
    answer = await client.chat.completions.create(model="base", messages=messages, tools=[WEATHER], **extra)
    return answer.choices[0]


async def test_tool_loop_ends_with_a_final_answer(client: AsyncOpenAI) -> None:
    messages: list[Any] = [ASK]
    first = await _turn(client, messages)
    assert first.finish_reason == "tool_calls" and first.message.tool_calls
    call = first.message.tool_calls[0]
    messages += [
        first.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
    ]
    final = await _turn(client, messages)
    assert final.message.tool_calls is None and final.finish_reason == "stop"
    assert "get_weather returned 18 degrees and sunny" in (final.message.content or "")

    stream = await client.chat.completions.create(model="base", messages=messages, tools=[WEATHER], stream=True)
    chunks = [c async for c in stream]
    assert all(c.choices[0].delta.tool_calls is None for c in chunks if c.choices)
    assert "18 degrees and sunny" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    messages += [final.message.model_dump(exclude_none=True), {"role": "user", "content": "and in Rome?"}]
    again = await _turn(client, messages)
    assert again.finish_reason == "tool_calls", "a new user turn starts a new tool loop"


async def test_tool_choice_after_results(client: AsyncOpenAI) -> None:
    messages: list[Any] = [
        ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
    ]
    tools = [WEATHER, FINAL]
    required = await client.chat.completions.create(
        model="base", messages=messages, tools=tools, tool_choice="required"
    )
    (call,) = required.choices[0].message.tool_calls or []
    assert call.function.name == "final_result", "required moves on to a tool not called yet"
    named = await client.chat.completions.create(
        model="base",
        messages=messages,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert (named.choices[0].message.tool_calls or [])[0].function.name == "get_weather"
    none = await client.chat.completions.create(model="base", messages=messages, tools=tools, tool_choice="none")
    assert none.choices[0].message.tool_calls is None and "rain" in (none.choices[0].message.content or "")


class Person(pydantic.BaseModel):
    name: str
    age: int = pydantic.Field(ge=0, le=120)
    email: str | None = None
    tags: list[str]


async def test_json_object_follows_the_schema_in_the_system_prompt(client: AsyncOpenAI) -> None:
    schema = Person.model_json_schema()
    system = (
        "As a genius expert, your task is to understand the content and provide the parsed objects in json that "
        f"match the following json_schema:\n\n```json\n{json.dumps(schema, indent=2)}\n```\n\n"
        "Make sure to return an instance of the JSON, not the schema itself"
    )
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Jason is 25 years old"}]
    answer = await client.chat.completions.create(
        model="base", messages=messages, response_format={"type": "json_object"}
    )
    data = json.loads(answer.choices[0].message.content or "")
    jsonschema.validate(data, schema)
    person = Person.model_validate(data)
    assert "email" in data and person.tags


async def test_json_object_follows_an_example_or_the_prompt(client: AsyncOpenAI) -> None:
    prompt = 'Tell me a joke. Reply in JSON like {"setup": "...", "punchline": "...", "rating": 3}'
    answer = await client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": prompt}], response_format={"type": "json_object"}
    )
    data = json.loads(answer.choices[0].message.content or "")
    assert set(data) == {"setup", "punchline", "rating"} and isinstance(data["rating"], int)

    topics = set()
    for text in ("summarise the quarterly earnings", "describe the volcano eruption"):
        answer = await client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": text}], response_format={"type": "json_object"}
        )
        topics.add(json.loads(answer.choices[0].message.content or "")["topic"])
    assert topics == {"quarterly", "eruption"}


def test_find_schema_looks_inside_wrappers_and_bounds_its_work() -> None:
    wrapped = 'Use: {"name": "person", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}'
    assert find_schema((wrapped,)) == {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert find_schema(("no json here", "{not json either")) is None
    hostile = "{" * 200_000 + '{"type": "object", "properties": {"x": {"type": "string"}}}'
    started = time.monotonic()
    assert find_schema((hostile,)) is None
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {"type": "array", "minItems": 10**9, "items": {"type": "string"}},
        {"type": "string", "minLength": 10**9},
        {"type": "integer", "minimum": "three", "maximum": None},
        {"$ref": "#/$defs/N", "$defs": {"N": {"properties": {"a": {"$ref": "#/$defs/N"}}, "required": ["a"]}}},
        {"$ref": "#/$defs/N", "$defs": {"N": {"type": "array", "items": {"$ref": "#/$defs/N"}, "minItems": 50}}},
    ],
)
def test_hostile_schemas_are_bounded(schema: dict[str, Any]) -> None:
    started = time.monotonic()
    value = instance(schema, random.Random(0))
    assert time.monotonic() - started < 1.0
    assert len(json.dumps(value)) < 200_000


async def test_hostile_json_schema_format_is_not_a_server_error(sim: SimServer) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "loop", "schema": {"$ref": "#"}}}
    async with aiohttp.ClientSession(sim.url) as http:
        async with http.post("/v1/chat/completions", json={"messages": [ASK], "response_format": fmt}) as response:
            assert response.status == 200
