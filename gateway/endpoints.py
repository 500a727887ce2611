"""The OpenAI endpoints the gateway proxies, and what differs between them (the rest of the path is shared).

Chat, completions, the Responses API and embeddings all get the same cohorts, plans, fallbacks, headers, metrics
and spans; what an endpoint changes is its path, the list an acceptable answer carries, where its token counts
are, whether it streams, and its ``gen_ai.operation.name``. The Responses API's operation name is ``chat``, as
OpenTelemetry's conventions use for OpenAI's Responses API (it is a chat completion with another shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Endpoint = Literal["chat", "completions", "responses", "embeddings"]


@dataclass(frozen=True)
class EndpointSpec:
    name: Endpoint
    path: str
    operation: str  # gen_ai.operation.name
    answer_list: str  # the list an acceptable answer has: choices, output, data
    input_tokens: str  # where usage keeps the prompt's token count
    output_tokens: str | None  # and the answer's (None: embeddings produce no tokens)
    streams: bool
    embedding: bool = False  # served by ``kind: embedding`` models only


ENDPOINTS: dict[Endpoint, EndpointSpec] = {
    "chat": EndpointSpec("chat", "/v1/chat/completions", "chat", "choices", "prompt_tokens", "completion_tokens", True),
    "completions": EndpointSpec(
        "completions", "/v1/completions", "text_completion", "choices", "prompt_tokens", "completion_tokens", True
    ),
    "responses": EndpointSpec("responses", "/v1/responses", "chat", "output", "input_tokens", "output_tokens", True),
    "embeddings": EndpointSpec(
        "embeddings", "/v1/embeddings", "embeddings", "data", "prompt_tokens", None, False, embedding=True
    ),
}
PROXY_ROUTES: dict[str, Endpoint] = {spec.path: name for name, spec in ENDPOINTS.items()}
