"""The simulator's ``/v1/embeddings``: vLLM's shape, deterministic unit vectors where similar texts are near,
every input form, ``dimensions`` and ``encoding_format``, limits, and the profile's kind and faults.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from gateway.sim import ModelProfile, SimProfile, SimServer

EMBEDDING_KEYS = ["id", "object", "created", "model", "data", "usage"]
USAGE = {"prompt_tokens": 7, "total_tokens": 7, "completion_tokens": 0, "prompt_tokens_details": None}


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = SimServer(["embed", "chat"], SimProfile(default=ModelProfile(max_model_len=64)))
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
    async with http.post("/v1/embeddings", json=body) as response:
        return response.status, await response.json()


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def vectors(client: AsyncOpenAI, texts: list[str], **extra: Any) -> list[list[float]]:
    answer = await client.embeddings.create(model="embed", input=texts, **extra)
    return [d.embedding for d in answer.data]


async def test_shape_matches_vllm(http: aiohttp.ClientSession) -> None:
    status, body = await post(http, {"model": "embed", "input": ["a b c", "d e f g"], "encoding_format": "float"})
    assert status == 200 and list(body) == EMBEDDING_KEYS
    assert re.match(r"^embd-[0-9a-f]{32}$", body["id"]) and (body["object"], body["model"]) == ("list", "embed")
    assert [list(d) for d in body["data"]] == [["index", "object", "embedding"]] * 2
    assert [d["index"] for d in body["data"]] == [0, 1] and body["data"][0]["object"] == "embedding"
    assert body["usage"] == {**USAGE, "completion_tokens_details": None}
    assert all(len(d["embedding"]) == 256 for d in body["data"])


async def test_similar_texts_get_similar_vectors(client: AsyncOpenAI) -> None:
    charged, card, weather, charges = await vectors(
        client,
        [
            "I was charged twice for my order",
            "charged twice on my card",
            "what is the weather in Paris",
            "Why are there two charges for my order?",
        ],
    )
    assert all(abs(math.sqrt(cosine(v, v)) - 1) < 1e-5 for v in (charged, card, weather))
    assert cosine(charged, card) > 0.5
    assert cosine(charged, weather) < 0.3 and cosine(card, weather) < 0.3
    assert cosine(charged, charges) > cosine(charges, weather) + 0.2


async def test_vectors_are_deterministic(client: AsyncOpenAI) -> None:
    (first,) = await vectors(client, ["the same text"])
    (again,) = await vectors(client, ["the same text"])
    async with SimServer(["other"]) as server, AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x") as other:
        elsewhere = (await other.embeddings.create(model="other", input="the same text")).data[0].embedding
    assert first == again
    assert max(abs(x - y) for x, y in zip(first, elsewhere, strict=True)) < 1e-6


async def test_input_forms_dimensions_and_base64(client: AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    status, ids = await post(http, {"input": [1, 2, 3], "encoding_format": "float"})
    assert status == 200 and len(ids["data"]) == 1 and ids["usage"]["prompt_tokens"] == 3
    status, lists = await post(http, {"input": [[1, 2, 3], [4, 5]], "encoding_format": "float"})
    assert lists["data"][0]["embedding"] == ids["data"][0]["embedding"]
    assert lists["usage"]["prompt_tokens"] == 5

    (short,) = await vectors(client, ["billing question"], dimensions=64)
    assert len(short) == 64 and abs(cosine(short, short) - 1) < 1e-5
    status, encoded = await post(http, {"input": "billing question", "encoding_format": "base64"})
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    status, plain = await post(http, {"input": "billing question", "encoding_format": "float"})
    assert len(decoded) == 256
    assert max(abs(x - y) for x, y in zip(decoded, plain["data"][0]["embedding"], strict=True)) < 1e-6


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "body.input"),
        ({"input": []}, "body.input"),
        ({"input": [1, "a"]}, "body.input"),
        ({"input": ["x"] * 2049}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "body.encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": 257}, "dimensions"),
        ({"input": "word " * 65}, "input"),
    ],
)
async def test_bad_requests_are_400(http: aiohttp.ClientSession, body: dict[str, Any], param: str) -> None:
    status, answer = await post(http, body)
    assert status == 400 and answer["error"]["param"] == param


async def test_profile_kind_faults_and_stats(sim: SimServer, client: AsyncOpenAI) -> None:
    sim.configure({"model": "chat", "set": {"kind": "generate"}})
    with pytest.raises(openai.BadRequestError) as refused:
        await client.embeddings.create(model="chat", input="x")
    assert "does not support Embeddings API" in str(refused.value)
    sim.configure({"model": "embed", "set": {"kind": "embedding", "embedding_dim": 32}})
    assert len((await vectors(client, ["x"]))[0]) == 32
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="embed", messages=[{"role": "user", "content": "hi"}])
    sim.configure({"model": "embed", "set": {"rate_limit_rate": 1.0}})
    with pytest.raises(openai.RateLimitError):
        await client.embeddings.create(model="embed", input="x")
    stats = sim.stats()["models"]
    assert (stats["embed"]["embeddings"], stats["embed"]["chat"], stats["embed"]["requests"]) == (2, 1, 3)
    assert (stats["embed"]["completed"], stats["embed"]["rejected"], stats["embed"]["rate_limited"]) == (1, 1, 1)
    assert (stats["chat"]["embeddings"], stats["chat"]["rejected"]) == (1, 1)
