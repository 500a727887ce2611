"""The gateway's answers, field for field, against the ``openai`` SDK's own types.

The SDK builds its objects without validating them: a field the server left out reads as None, and a typed client
only finds out when it reads it. Validating the raw JSON against the same pydantic types shows that every field
the SDK declares as required is there, in the type it declares. Runs in both client environments (openai 3.x, 2.x).
"""

from __future__ import annotations

import json
import typing
from typing import Any

import httpx
import pytest
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel

from tests.clients.common import (
    CHAT_MODEL,
    CHAT_WEATHER_TOOL,
    EMBEDDING_MODEL,
    RESPONSES_WEATHER_TOOL,
    WEATHER_QUESTION,
    Weather,
)

MESSAGES = [{"role": "user", "content": "Say hello to a new customer."}]
WEATHER_FORMAT = {"type": "json_schema", "name": "weather", "schema": Weather.model_json_schema(), "strict": True}


def _event_types() -> dict[str, type[BaseModel]]:
    """Each Responses stream event class by its ``type`` (the SDK's union is not discriminated, so a failure
    against it lists every member: this names the one that applies)."""
    union = typing.get_args(ResponseStreamEvent)
    members = typing.get_args(union[0]) if typing.get_origin(ResponseStreamEvent) is typing.Annotated else union
    return {value: m for m in members for value in typing.get_args(m.model_fields["type"].annotation)}


EVENT_TYPES = _event_types()

BODIES: dict[str, tuple[str, dict[str, Any], type[BaseModel]]] = {
    "chat": ("chat/completions", {"messages": MESSAGES, "n": 2, "logprobs": True, "top_logprobs": 2}, ChatCompletion),
    "chat-tools": ("chat/completions", {"messages": MESSAGES, "tools": [CHAT_WEATHER_TOOL]}, ChatCompletion),
    "completions": ("completions", {"prompt": "Once upon a time", "logprobs": 2, "max_tokens": 8}, Completion),
    "responses": ("responses", {"input": "Say hello.", "instructions": "Be brief."}, Response),
    "responses-tools": ("responses", {"input": WEATHER_QUESTION, "tools": [RESPONSES_WEATHER_TOOL]}, Response),
    "responses-json": ("responses", {"input": "Weather in Paris?", "text": {"format": WEATHER_FORMAT}}, Response),
}


@pytest.fixture
def http(base_url: str) -> typing.Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        yield client


@pytest.mark.parametrize("case", list(BODIES))
def test_answer_bodies(http: httpx.Client, case: str) -> None:
    path, body, model = BODIES[case]
    response = http.post(path, json={"model": CHAT_MODEL, **body})
    assert response.status_code == 200, response.text
    model.model_validate(response.json())


def test_embeddings_and_models(http: httpx.Client) -> None:
    embeddings = http.post("embeddings", json={"model": EMBEDDING_MODEL, "input": ["a refund", "hello"]})
    CreateEmbeddingResponse.model_validate(embeddings.json())
    for model in http.get("models").json()["data"]:
        Model.model_validate(model)
    Model.model_validate(http.get(f"models/{CHAT_MODEL}").json())


def sse_data(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", path, json={"model": CHAT_MODEL, "stream": True, **body}) as response:
        assert response.status_code == 200
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]" or path == "responses"
    return [json.loads(line) for line in lines if line != "[DONE]"]


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
def test_chat_stream_chunks(http: httpx.Client, tools: bool) -> None:
    body: dict[str, Any] = {"messages": MESSAGES, "stream_options": {"include_usage": True}, "logprobs": True}
    if tools:
        body["tools"] = [CHAT_WEATHER_TOOL]
    for chunk in sse_data(http, "chat/completions", body):
        ChatCompletionChunk.model_validate(chunk)


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
def test_responses_stream_events(http: httpx.Client, tools: bool) -> None:
    body: dict[str, Any] = {"input": WEATHER_QUESTION if tools else "Say hello."}
    if tools:
        body["tools"] = [RESPONSES_WEATHER_TOOL]
    events = sse_data(http, "responses", body)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        assert event["type"] in EVENT_TYPES, event["type"]
        EVENT_TYPES[event["type"]].model_validate(event)
