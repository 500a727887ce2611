"""Tracing: OpenTelemetry spans for the request path, following the GenAI semantic conventions.

One SERVER span per inbound request (continuing the client's ``traceparent``), one CLIENT span per upstream attempt
named ``chat {gen_ai.request.model}`` (or ``text_completion ...``) carrying the GenAI and OpenInference attributes,
sibling spans for fallback attempts, and separate traces *linked* to the primary span for shadow requests. The
attempt span's context is what goes to vLLM as ``traceparent``.

Export follows the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``..._TRACES_ENDPOINT``,
``OTEL_EXPORTER_OTLP_PROTOCOL`` ``http/protobuf`` or ``grpc``, ``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``) through
a batch processor, so export never blocks a request. With no endpoint there is no exporter and no span is recorded:
tracing then costs a no-op call per stage. Prompt and completion text are never recorded unless the policy's
``telemetry.record_content`` opts in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

PROVIDER = "vllm"
OPERATION = {"chat": "chat", "completions": "text_completion", "responses": "chat", "embeddings": "embeddings"}


def _otlp_exporter() -> SpanExporter | None:
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint or os.environ.get("OTEL_TRACES_EXPORTER", "otlp") == "none":
        return None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


class Tracing:
    """The gateway's tracer. ``processor`` (tests: a SimpleSpanProcessor over an in-memory exporter) overrides env."""

    def __init__(self, processor: SpanProcessor | None = None) -> None:
        self.provider: TracerProvider | None = None
        if processor is None:
            exporter = _otlp_exporter()
            processor = BatchSpanProcessor(exporter) if exporter is not None else None
        if processor is not None:
            resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "llm-gateway")})
            self.provider = TracerProvider(resource=resource)
            self.provider.add_span_processor(processor)
            self.tracer: trace.Tracer = self.provider.get_tracer("llm-gateway")
        else:
            self.tracer = trace.NoOpTracer()

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()

    def server_span(self, name: str, headers: Mapping[str, str], request_id: str) -> Span:
        """The request's SERVER span; without an exporter, the invalid span (the client's ``traceparent`` is then
        forwarded as it came, and no per-request tracing work is done)."""
        if self.provider is None:
            return trace.INVALID_SPAN
        context = extract(headers)
        span = self.tracer.start_span(name, context=context, kind=SpanKind.SERVER)
        if span.is_recording():
            span.set_attribute("gateway.request_id", request_id)
        return span

    def attempt_span(self, parent: Span, endpoint: str, model: str, attributes: Mapping[str, Any]) -> Span:
        return self._llm_span(trace.set_span_in_context(parent), endpoint, model, attributes, links=())

    def shadow_span(self, primary: Span | None, endpoint: str, model: str, attributes: Mapping[str, Any]) -> Span:
        """A new trace for a shadow request, linked to the primary request's span."""
        links = [Link(primary.get_span_context())] if primary is not None else []
        root = trace.set_span_in_context(trace.INVALID_SPAN)
        return self._llm_span(root, endpoint, model, {**attributes, "gateway.mirror": True}, links=links)

    def _llm_span(
        self, context: Context, endpoint: str, model: str, attributes: Mapping[str, Any], links: Sequence[Link]
    ) -> Span:
        operation = OPERATION.get(endpoint, endpoint)
        span = self.tracer.start_span(f"{operation} {model}", context=context, kind=SpanKind.CLIENT, links=links)
        if span.is_recording():
            span.set_attributes(
                {
                    "gen_ai.operation.name": operation,
                    "gen_ai.provider.name": PROVIDER,
                    "gen_ai.request.model": model,
                    "openinference.span.kind": "LLM",
                    "llm.provider": PROVIDER,
                    "llm.request.model_name": model,
                    **{k: v for k, v in attributes.items() if v is not None},
                }
            )
        return span

    def event_span(self, name: str, attributes: Mapping[str, Any]) -> None:
        """A zero-length span holding one event: state changes that happen outside any request (gate transitions)."""
        span = self.tracer.start_span(name, kind=SpanKind.INTERNAL)
        if span.is_recording():
            span.set_attributes(attributes)
            span.add_event(name, attributes)
        span.end()

    @staticmethod
    def inject(span: Span, headers: dict[str, str]) -> None:
        """Put ``span``'s context into outgoing headers as W3C ``traceparent``/``tracestate``."""
        if span.get_span_context().is_valid:
            inject(headers, context=trace.set_span_in_context(span))


def request_attributes(body: Mapping[str, Any]) -> dict[str, Any]:
    """The GenAI request-parameter attributes of a chat/completions body."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return {
        "gen_ai.request.max_tokens": max_tokens if isinstance(max_tokens, int) else None,
        "gen_ai.request.temperature": _number(body.get("temperature")),
        "gen_ai.request.top_p": _number(body.get("top_p")),
        "gen_ai.request.stream": body.get("stream") is True,
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def end_attempt(
    span: Span,
    *,
    response_model: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    finish_reasons: Sequence[str],
    error_type: str | None = None,
    error_message: str | None = None,
    completion_text: str | None = None,
) -> None:
    if span.is_recording():
        attributes: dict[str, Any] = {}
        if response_model:
            attributes["gen_ai.response.model"] = response_model
            attributes["llm.response.model_name"] = response_model
            attributes["llm.model_name"] = response_model
        if prompt_tokens is not None:  # embeddings have input tokens only: no output count at all
            attributes.update({"gen_ai.usage.input_tokens": prompt_tokens, "llm.token_count.prompt": prompt_tokens})
            attributes["llm.token_count.total"] = prompt_tokens + (completion_tokens or 0)
        if prompt_tokens is not None and completion_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = completion_tokens
            attributes["llm.token_count.completion"] = completion_tokens
        if finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = list(finish_reasons)
        if completion_text is not None:
            attributes["gen_ai.completion"] = completion_text
        span.set_attributes(attributes)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, error_message))
    span.end()
