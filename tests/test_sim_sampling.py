"""The simulator honours the sampling controls clients rely on: ``n``, ``stop``, ``seed``, ``logprobs``/
``top_logprobs`` and ``max_tokens``, in bodies and in streams, driven by the official ``openai`` client and raw
aiohttp over a real loopback socket.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from gateway.sim import ModelProfile, SimProfile, SimServer

USER = [{"role": "user", "content": "tell me something"}]


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = SimServer(["base"], SimProfile(default=ModelProfile(output_tokens=8, max_model_len=512)))
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


async def post(http: aiohttp.ClientSession, path: str, body: Any) -> tuple[int, Any]:
    async with http.post(path, json=body) as response:
        return response.status, await response.json()


async def events(http: aiohttp.ClientSession, path: str, body: Any) -> list[Any]:
    async with http.post(path, json=body) as response:
        assert response.status == 200
        text = await response.text()
    frames = text[:-2].split("\n\n")
    assert all(f.startswith("data: ") for f in frames) and frames[-1] == "data: [DONE]"
    return [json.loads(f[6:]) for f in frames[:-1]]


async def test_n_choices_each_with_its_index(client: AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(model="base", messages=USER, n=3)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    texts = [c.message.content or "" for c in answer.choices]
    assert all(len(t.split()) == 8 for t in texts) and len(set(texts)) > 1
    assert answer.usage is not None and answer.usage.completion_tokens == 24
    capped = await client.chat.completions.create(model="base", messages=USER, n=2, max_tokens=3)
    assert [c.finish_reason for c in capped.choices] == ["length", "length"]
    assert capped.usage is not None and capped.usage.completion_tokens == 6


async def test_n_stream_interleaves_choices(http: aiohttp.ClientSession) -> None:
    body = {"messages": USER, "n": 2, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    chunks = await events(http, "/v1/chat/completions", body)
    roles, contents, usage = chunks[:2], chunks[2:-1], chunks[-1]
    assert [r["choices"][0]["index"] for r in roles] == [0, 1]
    assert all(r["choices"][0]["delta"] == {"role": "assistant", "content": ""} for r in roles)
    assert [c["choices"][0]["index"] for c in contents] == [0, 1] * 3
    finishes = [c["choices"][0]["finish_reason"] for c in contents]
    assert finishes == [None, None, None, None, "length", "length"]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    assert len({c["id"] for c in chunks}) == 1


async def test_completions_n_per_prompt(client: AsyncOpenAI) -> None:
    answer = await client.completions.create(model="base", prompt=["one two", "three"], n=2, max_tokens=2)
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert all(c.text.startswith(" ") and len(c.text.split()) == 2 for c in answer.choices)
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, 8)


async def test_seed_makes_content_a_function_of_the_request(client: AsyncOpenAI) -> None:
    async def text(seed: int | None, messages: list[dict[str, str]] = USER, **extra: Any) -> str:
        answer = await client.chat.completions.create(model="base", messages=messages, seed=seed, **extra)
        return answer.choices[0].message.content or ""

    first, again, other = await text(7), await text(7), await text(8)
    assert first == again and first != other
    assert await text(7, [{"role": "user", "content": "something else"}]) != first
    assert await text(7, logprobs=True, top_logprobs=3) == first
    assert first.startswith(await text(7, max_tokens=3))
    assert await text(None) != await text(None)


async def test_stop_cuts_before_the_first_stop_string(client: AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    full = (await client.chat.completions.create(model="base", messages=USER, seed=3)).choices[0].message.content
    assert full is not None
    words = full.split()
    stop = " " + words[4]
    expected = full[: full.find(stop)]
    status, body = await post(
        http, "/v1/chat/completions", {"messages": USER, "seed": 3, "stop": ["never-there", stop]}
    )
    (choice,) = body["choices"]
    assert status == 200 and choice["message"]["content"] == expected
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", stop)
    assert body["usage"]["completion_tokens"] == len(expected.split())

    stream = await client.chat.completions.create(model="base", messages=USER, seed=3, stop=stop, stream=True)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"

    untouched = await client.chat.completions.create(model="base", messages=USER, seed=3, stop=["never-there"])
    assert untouched.choices[0].message.content == full


async def test_chat_logprobs_and_top_logprobs(client: AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(model="base", messages=USER, logprobs=True, top_logprobs=3)
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content and len(entries) == 8
    for entry in entries:
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True) and len({t.token for t in entry.top_logprobs}) == 3
    bare = await client.chat.completions.create(model="base", messages=USER, logprobs=True)
    assert bare.choices[0].logprobs is not None and bare.choices[0].logprobs.content is not None
    assert all(e.top_logprobs == [] for e in bare.choices[0].logprobs.content)
    plain = await client.chat.completions.create(model="base", messages=USER)
    assert plain.choices[0].logprobs is None

    stream = await client.chat.completions.create(
        model="base", messages=USER, logprobs=True, top_logprobs=1, stream=True
    )
    streamed = [c.choices[0] async for c in stream if c.choices and c.choices[0].delta.content]
    assert all(c.logprobs is not None and c.logprobs.content is not None for c in streamed)
    assert [c.logprobs.content[0].token for c in streamed if c.logprobs and c.logprobs.content] == [
        c.delta.content for c in streamed
    ]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"n": 0}, "n"),
        ({"stop": 5}, "body.stop"),
        ({"seed": "x"}, "body.seed"),
    ],
)
async def test_bad_sampling_fields_are_400(http: aiohttp.ClientSession, extra: dict[str, Any], param: str) -> None:
    status, body = await post(http, "/v1/chat/completions", {"messages": USER, **extra})
    assert status == 400 and body["error"]["param"] == param


async def test_completion_logprobs(client: AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    answer = await client.completions.create(model="base", prompt="hello", logprobs=2, max_tokens=4)
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None and logprobs.text_offset is not None
    assert "".join(logprobs.tokens) == answer.choices[0].text
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(4)]
    assert logprobs.token_logprobs is not None and all(lp <= 0 for lp in logprobs.token_logprobs)
    assert logprobs.top_logprobs is not None
    for token, top in zip(logprobs.tokens, logprobs.top_logprobs, strict=True):
        assert len(top) == 2 and max(top, key=top.__getitem__) == token

    body = {"prompt": "hello", "logprobs": 0, "max_tokens": 3, "stream": True}
    chunks = await events(http, "/v1/completions", body)
    offsets = [c["choices"][0]["logprobs"]["text_offset"][0] for c in chunks]
    texts = [c["choices"][0]["text"] for c in chunks]
    assert offsets == [0, len(texts[0]), len(texts[0]) + len(texts[1])]
    assert all(math.isfinite(c["choices"][0]["logprobs"]["token_logprobs"][0]) for c in chunks)
    with pytest.raises(openai.BadRequestError):
        await client.completions.create(model="base", prompt="hello", logprobs=25)


async def test_logprob_work_is_bounded(sim: SimServer, client: AsyncOpenAI) -> None:
    sim.configure({"set": {"output_tokens": 500}})
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model="base", messages=USER, n=128, logprobs=True, top_logprobs=20)
    assert "log probabilities" in str(refused.value)
    answer = await client.chat.completions.create(model="base", messages=USER, n=2, logprobs=True, top_logprobs=20)
    assert answer.usage is not None and answer.usage.completion_tokens == 1000
