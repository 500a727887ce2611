"""The simulator's ``/v1/responses``: vLLM's response object and SSE events, function tools and their loop,
``text.format``, ``previous_response_id`` and ``GET /v1/responses/{id}``, with the official ``openai`` client
(``responses.create``, ``responses.stream``) and raw aiohttp over a real loopback socket.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import openai
import pydantic
import pytest
from openai import AsyncOpenAI

from gateway.sim import ModelProfile, SimProfile, SimServer

RESPONSE_KEYS = [
    "id", "created_at", "incomplete_details", "instructions", "metadata", "model", "object", "output",
    "parallel_tool_calls", "temperature", "tool_choice", "tools", "top_p", "background", "max_output_tokens",
    "max_tool_calls", "previous_response_id", "prompt", "reasoning", "service_tier", "status", "text",
    "top_logprobs", "truncation", "usage", "user", "input_messages", "output_messages",
]  # fmt: skip
USAGE_KEYS = ["input_tokens", "input_tokens_details", "output_tokens", "output_tokens_details", "total_tokens"]
RESP_ID = re.compile(r"^resp_[0-9a-f]{32}$")
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = SimServer(["base", "embedder"], SimProfile(default=ModelProfile(output_tokens=6, max_model_len=512)))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(sim: SimServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0, timeout=5) as c:
        yield c


@pytest.fixture
async def http(sim: SimServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(sim.url) as session:
        yield session


async def post(http: aiohttp.ClientSession, body: Any) -> tuple[int, Any]:
    async with http.post("/v1/responses", json=body) as response:
        return response.status, await response.json()


async def sse(http: aiohttp.ClientSession, body: Any) -> list[tuple[str, Any]]:
    """(event name, payload) of each SSE event, checking the framing."""
    async with http.post("/v1/responses", json={**body, "stream": True}) as response:
        assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
        text = await response.text()
    out = []
    for block in text[:-2].split("\n\n"):
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
        out.append((event[7:], json.loads(data[6:])))
    return out


async def test_non_stream_matches_vllm_shape(http: aiohttp.ClientSession, sim: SimServer) -> None:
    status, body = await post(http, {"model": "base", "input": "say hi", "instructions": "be brief"})
    assert status == 200 and list(body) == RESPONSE_KEYS
    assert RESP_ID.match(body["id"]) and (body["object"], body["model"], body["status"]) == (
        "response",
        "base",
        "completed",
    )
    assert body["instructions"] == "be brief" and body["max_output_tokens"] == 512 - 12
    (item,) = body["output"]
    assert list(item) == ["id", "content", "role", "status", "type"] and item["id"].startswith("msg_")
    (part,) = item["content"]
    assert part["type"] == "output_text" and len(part["text"].split()) == 6 and part["annotations"] == []
    assert list(body["usage"]) == USAGE_KEYS
    assert (body["usage"]["input_tokens"], body["usage"]["output_tokens"], body["usage"]["total_tokens"]) == (12, 6, 18)
    assert body["usage"]["input_tokens_details"]["cached_tokens"] == 0
    stats = sim.stats()["models"]["base"]
    assert (stats["responses"], stats["requests"], stats["completed"], stats["chat"]) == (1, 1, 1, 0)

    status, cut = await post(http, {"input": "say hi", "max_output_tokens": 2})
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut["usage"]["output_tokens"] == 2 and cut["max_output_tokens"] == 2


async def test_openai_client_create_and_stream(client: AsyncOpenAI) -> None:
    answer = await client.responses.create(model="base", input=[{"role": "user", "content": "hello"}])
    assert answer.model == "base" and len(answer.output_text.split()) == 6
    assert answer.usage is not None and answer.usage.output_tokens == 6
    deltas = []
    async with client.responses.stream(model="base", input="hello", instructions="x") as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text and len(deltas) == 6 and final.status == "completed"
    toolless = await client.responses.create(model="base", input="hi", tool_choice="auto")
    assert toolless.output[0].type == "message" and toolless.tool_choice == "auto"


async def test_stream_events_in_vllm_order(http: aiohttp.ClientSession) -> None:
    events = await sse(http, {"input": "hello", "max_output_tokens": 3})
    names = [name for name, _ in events]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [p["sequence_number"] for _, p in events] == list(range(len(events)))
    assert all(p["type"] == name for name, p in events)
    created, completed = events[0][1]["response"], events[-1][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    assert created["id"] == completed["id"] and completed["status"] == "incomplete"
    text = "".join(p["delta"] for name, p in events if name == "response.output_text.delta")
    done = events[7][1]
    assert list(done) == ["content_index", "item_id", "logprobs", "output_index", "sequence_number", "text", "type"]
    assert done["text"] == text == completed["output"][0]["content"][0]["text"]
    assert len({p.get("item_id") for name, p in events if "item_id" in p}) == 1


async def test_function_tool_loop(client: AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    ask = [{"role": "user", "content": "weather in Paris?"}]
    first = await client.responses.create(model="base", input=ask, tools=[WEATHER])  # type: ignore[list-item]
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    assert call.id is not None and call.id.startswith("fc_")

    followup = [
        *ask,
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"},
    ]
    final = await client.responses.create(model="base", input=followup, tools=[WEATHER])  # type: ignore[arg-type, list-item]
    assert final.output[0].type == "message" and "get_weather returned sunny, 21C" in final.output_text

    continued = await client.responses.create(
        model="base",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "cloudy"}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert "get_weather returned cloudy" in continued.output_text
    assert continued.previous_response_id == first.id

    events = await sse(http, {"input": ask, "tools": [WEATHER]})
    names = [name for name, _ in events]
    assert names[2] == "response.output_item.added" and events[2][1]["item"]["status"] == "in_progress"
    arguments = "".join(p["delta"] for name, p in events if name == "response.function_call_arguments.delta")
    done = next(p for name, p in events if name == "response.function_call_arguments.done")
    assert arguments == done["arguments"] and json.loads(arguments)["city"]
    assert names[-2:] == ["response.output_item.done", "response.completed"]


async def test_previous_response_and_retrieval(client: AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    first = await client.responses.create(model="base", input="remember this")
    async with http.get(f"/v1/responses/{first.id}") as response:
        assert (
            response.status == 200 and (await response.json())["output"][0]["content"][0]["text"] == first.output_text
        )
    second = await client.responses.create(model="base", input="and now?", previous_response_id=first.id)
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    with pytest.raises(openai.NotFoundError) as missing:
        await client.responses.create(model="base", input="x", previous_response_id="resp_nope")
    assert missing.value.body == {
        "message": "Response with id 'resp_nope' not found.",
        "type": "invalid_request_error",
        "param": "response_id",
        "code": 404,
    }
    async with http.get("/v1/responses/resp_nope") as response:
        assert response.status == 404
    unstored = await client.responses.create(model="base", input="x", store=False)
    async with http.get(f"/v1/responses/{unstored.id}") as response:
        assert response.status == 404


class Answer(pydantic.BaseModel):
    city: str
    temperature: float


async def test_text_format(client: AsyncOpenAI) -> None:
    schema = Answer.model_json_schema()
    fmt = {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}}
    answer = await client.responses.create(model="base", input="weather?", text=fmt)  # type: ignore[arg-type]
    Answer.model_validate_json(answer.output_text)
    parsed = await client.responses.parse(model="base", input="weather?", text_format=Answer)
    assert isinstance(parsed.output_parsed, Answer)
    instructions = f"Answer with JSON matching this schema: {json.dumps(schema)}"
    loose = await client.responses.create(
        model="base", input="weather?", instructions=instructions, text={"format": {"type": "json_object"}}
    )
    jsonschema.validate(json.loads(loose.output_text), schema)


async def test_logprobs_and_seed(client: AsyncOpenAI) -> None:
    kwargs: dict[str, Any] = {"model": "base", "input": "hi", "include": ["message.output_text.logprobs"]}
    answer = await client.responses.create(**kwargs, top_logprobs=2, extra_body={"seed": 5})
    part = answer.output[0].content[0]  # type: ignore[union-attr]
    assert part.type == "output_text" and part.logprobs is not None
    assert "".join(lp.token for lp in part.logprobs) == part.text
    assert all(len(lp.top_logprobs) == 2 for lp in part.logprobs) and answer.top_logprobs == 2
    again = await client.responses.create(model="base", input="hi", extra_body={"seed": 5})
    assert again.output_text == answer.output_text


async def test_profile_behaviours_and_kind(sim: SimServer, client: AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    sim.configure({"model": "base", "set": {"error_rate": 1.0, "error_status": 503}})
    with pytest.raises(openai.InternalServerError) as failed:
        await client.responses.create(model="base", input="x")
    assert failed.value.status_code == 503
    sim.configure({"model": "embedder", "set": {"kind": "embedding"}})
    status, body = await post(http, {"model": "embedder", "input": "x"})
    assert status == 400 and body["error"]["message"] == "The model `embedder` does not support Responses API"
    status, body = await post(http, {"model": "embedder"})
    assert status == 400 and body["error"]["param"] == "body.input"
    stats = sim.stats()["models"]
    assert (stats["base"]["errors"], stats["embedder"]["rejected"], stats["embedder"]["responses"]) == (1, 1, 1)
