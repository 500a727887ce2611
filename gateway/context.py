"""RequestContext: one request's state as it moves through the stages, typed instead of loose dicts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import INVALID_SPAN, Span

from gateway.auth import ClientKey
from gateway.endpoints import Endpoint
from gateway.evals.answer import StreamAssembler
from gateway.routing.cohorts import CohortDecision
from gateway.routing.features import RequestFeatures
from gateway.routing.planner import Plan


@dataclass(slots=True)
class AttemptRecord:
    """One upstream call: which model and replica, how it ended, how long it took (seconds)."""

    model: str
    backend: str
    number: int  # 1-based over the whole request
    outcome: str = "ok"  # "ok" or the fallback reason it caused ("error", "timeout", ...)
    status: int | None = None
    upstream_s: float = 0.0
    error: str | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class RequestContext:
    request_id: str
    endpoint: Endpoint
    body: dict[str, Any]
    headers: dict[str, str]  # lower-cased names
    policy_version: str = ""
    started: float = field(default_factory=time.perf_counter)
    features: RequestFeatures | None = None  # what classification read, reused by dispatch (affinity)
    decision: CohortDecision | None = None
    plan: Plan | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    answered_by: str | None = None
    fallback: str | None = None  # "<reason>:<from-model>" when the answer came from a fallback
    status: int = 200
    usage: Usage | None = None
    finish_reasons: list[str] = field(default_factory=list)
    first_byte_at: float | None = None
    upstream_s: float = 0.0  # time spent waiting on backends, for the overhead figure
    stream_error: str | None = None
    relayed_chunks: int = 0  # stream chunks with choices sent to the client (a token each, roughly)
    answer_json: dict[str, Any] | None = None  # the non-stream answer as parsed (for evaluators)
    assembler: StreamAssembler | None = None  # collects a streamed answer (for evaluators)
    upstream_model: str | None = None  # what vLLM answered in ``model`` (its served name)
    server_span: Span = INVALID_SPAN
    record_content: bool = False  # the policy's telemetry.record_content, for this request's spans
    client_key: ClientKey | None = None  # the authenticated key, when the policy has ``keys``
    forward_headers: tuple[str, ...] = ()  # client headers passed on to backends (policy limits.forward_headers)
    pinned_backend: str | None = None  # the URL a Responses continuation must go to (``previous_response_id``)

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def client_wants_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    @property
    def cohort(self) -> str:
        return self.decision.cohort if self.decision else ""

    @property
    def route(self) -> str:
        return self.plan.route if self.plan else ""

    def note_fallback(self, reason: str, from_model: str) -> None:
        if self.fallback is None:
            self.fallback = f"{reason}:{from_model}"
