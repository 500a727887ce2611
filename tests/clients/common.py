"""What the client tests share: the names a user sends, a tool, a typed answer, and what every answer must carry."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, Field

API_KEY = "sk-local-dummy"
"""Any key: the local policy has no ``keys:`` section, and the clients refuse to start without one."""
CHAT_MODEL = "support-assistant"
"""The local policy's public model: the cohort rules pick the registry model that answers."""
EMBEDDING_MODEL = "embedder"
"""The local policy's ``kind: embedding`` model, named directly (the only way /v1/embeddings reaches it)."""
ANSWERING_MODELS = frozenset({"base", "billing-specialist", "policy-specialist", "merged-v1"})
"""Registry names: what the gateway puts in an answer's ``model`` and ``x-gateway-model``."""
TOOL_MODELS = frozenset({"merged-v1", "billing-specialist", "base"})
"""The ``tool_required`` route's models (split, then its fallback)."""
GATEWAY_HEADERS = ("x-request-id", "x-gateway-cohort", "x-gateway-route", "x-gateway-model", "x-gateway-policy-version")
WEATHER_QUESTION = "What is the weather in Paris right now? Use the get_weather tool."
WEATHER_REPORT = "sunny, 21 degrees Celsius"
"""What the ``get_weather`` tool returns: a final answer quotes it, which shows the tool result reached the model."""


class Weather(BaseModel):
    """A typed answer with the constraints a structured-output client checks."""

    city: str
    temperature_c: int = Field(ge=-60, le=60)
    conditions: Literal["sunny", "cloudy", "rain", "snow"]
    advice: list[str]


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"{city}: {WEATHER_REPORT}"


WEATHER_TOOL_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "the city"}},
    "required": ["city"],
    "additionalProperties": False,
}
CHAT_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": WEATHER_TOOL_PARAMETERS,
    },
}
RESPONSES_WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": WEATHER_TOOL_PARAMETERS,
    "strict": True,
}


def schema_prompt(model: type[BaseModel], question: str) -> str:
    """A JSON-mode prompt as its documentation tells a user to write one: the schema the answer must follow."""
    return (
        f"{question}\nAnswer with a JSON object that follows this JSON Schema:\n{json.dumps(model.model_json_schema())}"
    )


def check_gateway_headers(headers: Mapping[str, str], *, models: frozenset[str] = ANSWERING_MODELS) -> None:
    """The routing headers of a proxied answer, with the registry name of the model that answered."""
    lowered = {key.lower(): value for key, value in headers.items()}
    missing = [name for name in GATEWAY_HEADERS if not lowered.get(name)]
    assert not missing, f"missing gateway headers {missing} in {sorted(lowered)}"
    assert lowered["x-gateway-model"] in models, lowered["x-gateway-model"]
    assert lowered["x-gateway-policy-version"].startswith("local-default/")


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
