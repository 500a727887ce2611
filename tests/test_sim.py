"""The vLLM simulator, driven over a real loopback socket by the official ``openai`` client and raw aiohttp.

Expected key orders are copied from the captured vLLM 0.32 answers (shared/vllm-reference) so that this file
stays self-contained.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import openai
import pydantic
import pytest
from openai import AsyncOpenAI

from gateway.sim import ModelProfile, SimProfile, SimServer
from gateway.sim.errors import SimError
from gateway.sim.schema_instance import instance

CHAT_KEYS = [
    "id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage",
    "prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params", "ec_transfer_params", "metrics",
]  # fmt: skip
CHAT_CHOICE_KEYS = ["index", "message", "logprobs", "finish_reason", "stop_reason", "token_ids", "routed_experts"]
MESSAGE_KEYS = ["role", "content", "refusal", "annotations", "audio", "function_call", "reasoning"]
TOOL_MESSAGE_KEYS = ["role", "content", "refusal", "annotations", "audio", "function_call", "tool_calls", "reasoning"]
USAGE_KEYS = [
    "prompt_tokens",
    "total_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
]
CHUNK_KEYS = ["id", "object", "created", "model", "choices"]
ROLE_CHUNK_KEYS = [*CHUNK_KEYS, "prompt_token_ids", "prompt_text"]
ROLE_CHOICE_KEYS = ["index", "delta", "logprobs", "finish_reason"]
CONTENT_CHOICE_KEYS = ["index", "delta", "logprobs", "finish_reason", "token_ids"]
LAST_CHOICE_KEYS = ["index", "delta", "logprobs", "finish_reason", "stop_reason", "token_ids"]
USAGE_CHUNK_KEYS = [*CHUNK_KEYS, "usage", "system_fingerprint"]
COMPLETION_KEYS = [
    "id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage",
    "kv_transfer_params", "ec_transfer_params", "metrics",
]  # fmt: skip
COMPLETION_CHOICE_KEYS = [
    "index", "text", "logprobs", "finish_reason", "stop_reason", "token_ids", "prompt_logprobs",
    "prompt_token_ids", "routed_experts",
]  # fmt: skip
COMPLETION_CHUNK_CHOICE_KEYS = [
    "index", "text", "logprobs", "finish_reason", "stop_reason", "prompt_token_ids", "token_ids",
]  # fmt: skip
MODEL_KEYS = ["id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"]

CHAT_ID = re.compile(r"^chatcmpl-[0-9a-f]{16}$")
TOOL_ID = re.compile(r"^chatcmpl-tool-[0-9a-f]{16}$")
FINGERPRINT = re.compile(r"^vllm-0\.32\.0-[0-9a-f]{8}$")
REFUSAL = "I'm sorry, but I can't help with that."

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "integer"}}, "required": ["tz"]},
    },
}
USER = [{"role": "user", "content": "what is the weather in Paris"}]  # 6 words + 4 overhead = 10 tokens
USER_TOKENS = 10


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = SimServer(["base", "merged"], SimProfile(default=ModelProfile(output_tokens=8, max_model_len=512)))
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


def configure(sim: SimServer, model: str | None = None, **changes: Any) -> None:
    sim.configure({"set": changes} if model is None else {"model": model, "set": changes})


async def post_json(http: aiohttp.ClientSession, path: str, body: Any) -> tuple[int, Any]:
    async with http.post(path, json=body) as response:
        return response.status, await response.json()


async def post_sse(http: aiohttp.ClientSession, path: str, body: Any) -> list[Any]:
    """Every SSE event's payload, checking vLLM's framing; ``[DONE]`` comes back as the string."""
    async with http.post(path, json=body) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        text = await response.text()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events)
    return [e[6:] if e == "data: [DONE]" else json.loads(e[6:]) for e in events]


async def test_chat_non_stream_matches_vllm_shape(sim: SimServer, http: aiohttp.ClientSession) -> None:
    status, body = await post_json(http, "/v1/chat/completions", {"model": "base", "messages": USER})
    assert status == 200
    assert list(body) == CHAT_KEYS
    assert CHAT_ID.match(body["id"]) and FINGERPRINT.match(body["system_fingerprint"])
    assert (body["object"], body["model"]) == ("chat.completion", "base")
    assert abs(body["created"] - time.time()) < 5
    choice = body["choices"][0]
    assert list(choice) == CHAT_CHOICE_KEYS and list(choice["message"]) == MESSAGE_KEYS
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 8
    assert list(body["usage"]) == USAGE_KEYS
    assert body["usage"]["prompt_tokens"] == USER_TOKENS
    assert body["usage"]["completion_tokens"] == 8 and body["usage"]["total_tokens"] == USER_TOKENS + 8


async def test_max_tokens_cuts_with_length(client: AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(model="base", messages=USER, max_tokens=3)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    assert len((answer.choices[0].message.content or "").split()) == 3


async def test_chat_stream_with_usage(http: aiohttp.ClientSession) -> None:
    body = {"model": "merged", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    events = await post_sse(http, "/v1/chat/completions", body)
    role, *contents, usage, done = events
    assert done == "[DONE]"
    assert list(role) == ROLE_CHUNK_KEYS and list(role["choices"][0]) == ROLE_CHOICE_KEYS
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(contents) == 8 and len({e["id"] for e in events[:-1]}) == 1 and CHAT_ID.match(role["id"])
    assert all(list(c) == CHUNK_KEYS and c["object"] == "chat.completion.chunk" for c in contents)
    assert all(list(c["choices"][0]) == CONTENT_CHOICE_KEYS for c in contents[:-1])
    assert [c["choices"][0]["finish_reason"] for c in contents] == [None] * 7 + ["stop"]
    assert list(contents[-1]["choices"][0]) == LAST_CHOICE_KEYS
    assert list(usage) == USAGE_CHUNK_KEYS and usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": USER_TOKENS, "total_tokens": USER_TOKENS + 8, "completion_tokens": 8}


async def test_chat_stream_usage_only_when_asked(client: AsyncOpenAI) -> None:
    for include in (False, True):
        options = {"include_usage": True} if include else None
        stream = await client.chat.completions.create(model="base", messages=USER, stream=True, stream_options=options)
        chunks = [chunk async for chunk in stream]
        assert [c.usage is not None for c in chunks] == [False] * 9 + [True] * include
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(text.split()) == 8


async def test_stream_paces_tokens(sim: SimServer, http: aiohttp.ClientSession) -> None:
    configure(sim, ttft_s=0.1, per_token_s=0.05, output_tokens=4)
    started = time.monotonic()
    arrivals = []
    async with http.post("/v1/chat/completions", json={"messages": USER, "stream": True}) as response:
        async for line in response.content:
            if line.startswith(b"data: {"):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 5
    assert arrivals[0] >= 0.1
    assert arrivals[-1] - arrivals[1] >= 0.14


async def test_completions(http: aiohttp.ClientSession, client: AsyncOpenAI) -> None:
    status, body = await post_json(http, "/v1/completions", {"model": "base", "prompt": "one two three four"})
    assert status == 200 and list(body) == COMPLETION_KEYS
    assert re.match(r"^cmpl-[0-9a-f]{16}$", body["id"]) and body["object"] == "text_completion"
    assert list(body["choices"][0]) == COMPLETION_CHOICE_KEYS and body["choices"][0]["text"].startswith(" ")
    assert body["usage"]["prompt_tokens"] == 4 and body["usage"]["completion_tokens"] == 8
    events = await post_sse(
        http,
        "/v1/completions",
        {"prompt": "a b", "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}},
    )
    *chunks, usage, done = events
    assert done == "[DONE]" and usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    assert all(list(c["choices"][0]) == COMPLETION_CHUNK_CHOICE_KEYS for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    answer = await client.completions.create(model="merged", prompt="hello")
    assert answer.model == "merged" and answer.usage is not None and answer.usage.completion_tokens == 8


async def test_models_list(client: AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    assert [m.id async for m in client.models.list()] == ["base", "merged"]
    async with http.get("/v1/models") as response:
        body = await response.json()
    assert body["object"] == "list" and list(body["data"][0]) == MODEL_KEYS
    assert body["data"][0]["owned_by"] == "vllm" and body["data"][0]["max_model_len"] == 512
    assert body["data"][0]["parent"] is None


async def test_unknown_model_and_path(sim: SimServer, client: AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="nope", messages=USER)
    assert caught.value.status_code == 404
    status, body = await post_json(http, "/v1/completions", {"model": "nope", "prompt": "x"})
    assert status == 404
    assert body == {
        "error": {"message": "The model `nope` does not exist.", "type": "NotFoundError", "param": "model", "code": 404}
    }
    assert sim.stats()["unknown_model"] == 2
    async with http.get("/v2/whatever") as response:
        assert response.status == 404 and await response.json() == {"detail": "Not Found"}


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (b"{not json", "body"),
        (b'{"model": "base"}', "body.messages"),
        (b'{"model": "base", "messages": "hi"}', "body.messages"),
        (b'{"messages": [], "max_tokens": "ten"}', "body.max_tokens"),
        (b"[1, 2]", "body"),
    ],
)
async def test_bad_bodies_are_400(http: aiohttp.ClientSession, payload: bytes, param: str) -> None:
    async with http.post("/v1/chat/completions", data=payload) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert (error["type"], error["code"], error["param"]) == ("BadRequestError", 400, param)


async def test_context_limits(client: AsyncOpenAI, sim: SimServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="base", messages=USER, max_tokens=100000)
    assert "max_tokens=100000 cannot be greater than max_model_len=512" in str(caught.value)
    long = [{"role": "user", "content": "word " * 600}]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="base", messages=long)
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "input_tokens"
    configure(sim, output_tokens=100)
    near = [{"role": "user", "content": "word " * 500}]  # 504 prompt tokens: room for 8
    answer = await client.chat.completions.create(model="base", messages=near, max_tokens=50)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 8
    assert sim.stats()["models"]["base"]["rejected"] == 2


async def test_json_object_and_schema(client: AsyncOpenAI, sim: SimServer) -> None:
    answer = await client.chat.completions.create(model="base", messages=USER, response_format={"type": "json_object"})
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)

    class Leg(pydantic.BaseModel):
        city: str
        days: int = pydantic.Field(ge=1, le=5)

    class Trip(pydantic.BaseModel):
        name: str
        kind: str = pydantic.Field(json_schema_extra={"enum": ["bus", "train"]})
        legs: list[Leg] = pydantic.Field(min_length=2)
        note: str | None
        budget: float = pydantic.Field(gt=0, lt=1)

    schema = Trip.model_json_schema()
    fmt = {"type": "json_schema", "json_schema": {"name": "trip", "schema": schema, "strict": True}}
    answer = await client.chat.completions.create(model="base", messages=USER, response_format=fmt)
    data = json.loads(answer.choices[0].message.content or "")
    jsonschema.validate(data, schema)
    assert len(data["legs"]) == 2 and answer.choices[0].finish_reason == "stop"

    configure(sim, invalid_json_rate=1.0)
    answer = await client.chat.completions.create(model="base", messages=USER, response_format=fmt)
    with pytest.raises(json.JSONDecodeError):
        json.loads(answer.choices[0].message.content or "")
    assert sim.stats()["models"]["base"]["invalid_json"] == 1


def test_schema_instance_handles_refs_unions_and_all_of() -> None:
    import random

    schema = {
        "type": "object",
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
        "properties": {
            "p": {"$ref": "#/$defs/Point"},
            "u": {"anyOf": [{"type": "null"}, {"type": "integer", "exclusiveMinimum": 3, "maximum": 4}]},
            "a": {"allOf": [{"properties": {"k": {"const": 7}}, "required": ["k"]}, {"type": "object"}]},
            "s": {"type": "string", "minLength": 12, "maxLength": 12},
            "t": {"type": ["boolean", "null"]},
        },
        "required": ["p", "u", "a", "s", "t"],
        "additionalProperties": False,
    }
    for seed in range(20):
        value = instance(schema, random.Random(seed))
        jsonschema.validate(value, schema)
        assert value["u"] == 4 and value["a"] == {"k": 7}


async def test_tool_choices(client: AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    tools = [WEATHER, TIME]
    status, body = await post_json(http, "/v1/chat/completions", {"messages": USER, "tools": tools})
    assert status == 200
    choice = body["choices"][0]
    assert list(choice["message"]) == TOOL_MESSAGE_KEYS and choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert list(call) == ["id", "type", "function"] and list(call["function"]) == ["name", "arguments"]
    assert TOOL_ID.match(call["id"]) and call["type"] == "function" and call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])

    required = await client.chat.completions.create(model="base", messages=USER, tools=tools, tool_choice="required")
    assert required.choices[0].message.content == "" and required.choices[0].finish_reason == "tool_calls"
    named = await client.chat.completions.create(
        model="base",
        messages=USER,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    named_call = (named.choices[0].message.tool_calls or [])[0]
    assert named_call.function.name == "get_time" and named.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(named_call.function.arguments)["tz"], int)
    plain = await client.chat.completions.create(model="base", messages=USER, tools=tools, tool_choice="none")
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].finish_reason == "stop"
    assert len((plain.choices[0].message.content or "").split()) == 8


async def test_tool_call_stream(http: aiohttp.ClientSession) -> None:
    body = {"messages": USER, "tools": [WEATHER], "stream": True}
    role, header, *fragments, finish, done = await post_sse(http, "/v1/chat/completions", body)
    assert done == "[DONE]" and role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    (head,) = header["choices"][0]["delta"]["tool_calls"]
    assert header["choices"][0]["delta"]["content"] is None
    assert list(head) == ["id", "type", "index", "function"] and head["function"] == {"name": "get_weather"}
    arguments = ""
    for fragment in fragments:
        (part,) = fragment["choices"][0]["delta"]["tool_calls"]
        assert list(part) == ["index", "function"] and list(part["function"]) == ["arguments"]
        arguments += part["function"]["arguments"]
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])
    assert finish["choices"][0]["delta"] == {} and finish["choices"][0]["finish_reason"] == "tool_calls"
    assert list(finish["choices"][0]) == LAST_CHOICE_KEYS


async def test_malformed_tool_calls_and_no_parser(sim: SimServer, client: AsyncOpenAI) -> None:
    configure(sim, malformed_tool_call_rate=1.0)
    for _ in range(6):
        answer = await client.chat.completions.create(model="base", messages=USER, tools=[WEATHER])
        call = (answer.choices[0].message.tool_calls or [])[0]
        try:
            json.loads(call.function.arguments)
            valid_args = True
        except json.JSONDecodeError:
            valid_args = False
        assert not valid_args or call.function.name != "get_weather"
    assert sim.stats()["models"]["base"]["malformed_tool_calls"] == 6
    configure(sim, tool_parser=False)
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="base", messages=USER, tools=[WEATHER])
    answer = await client.chat.completions.create(model="base", messages=USER, tools=[WEATHER], tool_choice="none")
    assert answer.choices[0].message.tool_calls is None


async def test_refusals(sim: SimServer, client: AsyncOpenAI) -> None:
    configure(sim, "merged", refusal_rate=1.0)
    answer = await client.chat.completions.create(model="merged", messages=USER)
    assert answer.choices[0].message.content == REFUSAL
    other = await client.chat.completions.create(model="base", messages=USER)
    assert other.choices[0].message.content != REFUSAL
    stats = sim.stats()["models"]
    assert (stats["merged"]["refusals"], stats["base"]["refusals"]) == (1, 0)


async def test_injected_errors_and_rate_limits(sim: SimServer, client: AsyncOpenAI) -> None:
    configure(sim, "base", error_rate=1.0, error_status=503)
    configure(sim, "merged", rate_limit_rate=1.0)
    with pytest.raises(openai.InternalServerError) as failed:
        await client.chat.completions.create(model="base", messages=USER)
    assert failed.value.status_code == 503
    assert isinstance(failed.value.body, dict) and failed.value.body["code"] == 503
    assert failed.value.body["type"] == "ServiceUnavailableError"
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="merged", messages=USER, stream=True)
    assert limited.value.status_code == 429
    stats = sim.stats()["models"]
    assert (stats["base"]["errors"], stats["base"]["rate_limited"], stats["base"]["completed"]) == (1, 0, 0)
    assert (stats["merged"]["errors"], stats["merged"]["rate_limited"]) == (0, 1)


async def test_hang_until_client_gives_up(sim: SimServer) -> None:
    configure(sim, hang_rate=1.0)
    async with AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0, timeout=0.3) as impatient:
        with pytest.raises(openai.APITimeoutError):
            await impatient.chat.completions.create(model="base", messages=USER)
    for _ in range(100):
        stats = sim.stats()["models"]["base"]
        if stats["cancelled"]:
            break
        await asyncio.sleep(0.02)
    assert (stats["hung"], stats["cancelled"], stats["running"], stats["completed"]) == (1, 1, 0, 0)


async def test_stream_cut_ends_without_done(sim: SimServer, http: aiohttp.ClientSession) -> None:
    configure(sim, stream_cut_after=2)
    lines: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post("/v1/chat/completions", json={"messages": USER, "stream": True}) as response:
            async for line in response.content:
                lines.append(line)
    events = [line for line in lines if line.startswith(b"data: ")]
    assert len(events) == 3 and b"[DONE]" not in b"".join(lines)
    stats = sim.stats()["models"]["base"]
    assert (stats["stream_cut"], stats["completed"], stats["cancelled"]) == (1, 0, 0)


async def test_health_and_metrics(sim: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.get("/health") as response:
        assert response.status == 200 and await response.read() == b""
    async with http.post("/sim/config", json={"health_status": 503}) as response:
        assert response.status == 200 and (await response.json())["health_status"] == 503
    async with http.get("/health") as response:
        assert response.status == 503
    assert sim.stats()["health_checks"] == 2

    configure(sim, "merged", ttft_s=0.3, max_num_seqs=1)
    slow = [
        asyncio.create_task(post_json(http, "/v1/chat/completions", {"model": "merged", "messages": USER}))
        for _ in range(2)
    ]
    await asyncio.sleep(0.1)
    async with http.get("/metrics") as response:
        text = await response.text()
    await asyncio.gather(*slow)
    for line in (
        'vllm:num_requests_running{engine="0",model_name="merged"} 1.0',
        'vllm:num_requests_waiting{engine="0",model_name="merged"} 1.0',
        'vllm:kv_cache_usage_perc{engine="0",model_name="merged"} 1.0',
        'vllm:num_requests_running{engine="0",model_name="base"} 0.0',
        "# TYPE vllm:num_requests_running gauge",
    ):
        assert line in text.splitlines()
    async with http.get("/metrics") as response:
        after = (await response.text()).splitlines()
    assert 'vllm:prompt_tokens_total{engine="0",model_name="merged"} 20.0' in after
    assert 'vllm:generation_tokens_total{engine="0",model_name="merged"} 16.0' in after
    assert 'vllm:request_success_total{engine="0",finished_reason="stop",model_name="merged"} 2.0' in after


async def test_stats_counts_headers_and_shadow(sim: SimServer, client: AsyncOpenAI) -> None:
    await client.chat.completions.create(model="base", messages=USER, stream=True)
    await client.completions.create(
        model="base", prompt="hi", extra_headers={"X-Gateway-Shadow": "1", "X-Trace": "abc"}
    )
    stats = sim.stats()
    base = stats["models"]["base"]
    assert stats["total_requests"] == 2 and stats["models"]["merged"]["requests"] == 0
    assert (base["requests"], base["chat"], base["completions"], base["stream"], base["non_stream"]) == (2, 1, 1, 1, 1)
    assert (base["completed"], base["shadow"], base["running"]) == (2, 1, 0)
    assert base["last_headers"]["x-trace"] == "abc" and base["last_headers"]["authorization"] == "Bearer x"
    sim.configure({"reset_stats": True})
    assert sim.stats()["models"]["base"]["requests"] == 0


async def test_sim_config_endpoint(sim: SimServer, http: aiohttp.ClientSession) -> None:
    status, config = await post_json(http, "/sim/config", {"model": "merged", "set": {"ttft_s": 0.5}})
    assert status == 200
    assert config["models"]["merged"]["ttft_s"] == 0.5 and config["models"]["base"]["ttft_s"] == 0.0
    assert config["models"]["merged"]["output_tokens"] == 8
    for bad in (
        {"set": {"error_rate": 2}},
        {"set": {"no_such_field": 1}},
        {"model": "ghost", "set": {}},
        {"sett": {}},
        [],
    ):
        status, body = await post_json(http, "/sim/config", bad)
        assert status == 400 and body["error"]["type"] == "BadRequestError", bad
    async with http.get("/sim/config") as response:
        assert (await response.json()) == config
    status, config = await post_json(http, "/sim/config", {"set": {}, "reset_profile": True, "reset_stats": True})
    assert status == 200 and config["models"]["merged"]["ttft_s"] == 0.0
    with pytest.raises(SimError):
        sim.configure({"health_status": 42})


def test_profile_file(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("seed: 7\ndefault: {output_tokens: 4}\nmodels:\n  slow: {ttft_s: 2}\n", encoding="utf-8")
    profile = SimProfile.from_file(path)
    assert profile.seed == 7
    assert (profile.for_model("slow").ttft_s, profile.for_model("slow").output_tokens) == (2.0, 4)
    assert profile.for_model("other").ttft_s == 0.0
    path.write_text('{"default": {"output_tokenz": 4}}', encoding="utf-8")
    with pytest.raises(pydantic.ValidationError):
        SimProfile.from_file(path)


async def _contents(seed: int) -> list[str]:
    profile = SimProfile(seed=seed, default=ModelProfile(error_rate=0.3, refusal_rate=0.2))
    async with SimServer(["m"], profile) as server, aiohttp.ClientSession(server.url) as http:
        out = []
        for i in range(8):
            status, body = await post_json(
                http, "/v1/chat/completions", {"messages": [{"role": "user", "content": f"q{i}"}]}
            )
            out.append(body["choices"][0]["message"]["content"] if status == 200 else f"error {status}")
        return out


async def test_determinism() -> None:
    first, second, other = await _contents(1), await _contents(1), await _contents(2)
    assert first == second
    assert first != other
    assert any(c.startswith("error") for c in first) and any(not c.startswith("error") for c in first)


def test_run_sim_prints_ready_line() -> None:
    code = "from gateway.sim import run_sim; run_sim('127.0.0.1', 0, ['a', 'b'], None)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert re.match(r"^sim listening on http://127\.0\.0\.1:\d+ models=a,b$", line.strip()), line
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == 0
