"""GatewayMetrics: the Prometheus series operators alert on (docs/architecture.md, telemetry), prefix ``llm_gateway_``.

Every label value comes from the policy (model, cohort, route, backend label) or a fixed set (reason, status
class), never from request text, so cardinality stays bounded. Each instance owns its registry: tests and several
gateways in one process never share series.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest

from gateway.telemetry.series import Counter, Gauge, Histogram


class BreakerView(Protocol):
    @property
    def state(self) -> str: ...


class BackendView(Protocol):
    """What the backend gauges read; telemetry imports no pipeline stage, so it names the shape it needs."""

    @property
    def model(self) -> str: ...

    @property
    def breaker(self) -> BreakerView: ...

    @property
    def label(self) -> str: ...

    @property
    def available(self) -> bool: ...


LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
TPOT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = "llm_gateway_"
        self.requests = Counter(
            p + "requests_total", "Proxied requests by outcome.", ["cohort", "route", "model", "status"], registry=r
        )
        self.duration = Histogram(
            p + "request_duration_seconds",
            "Whole request time, first byte in to last byte out.",
            ["cohort", "route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            p + "time_to_first_token_seconds",
            "Time to the first streamed chunk (or the whole answer when not streaming).",
            ["cohort", "model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            p + "time_per_output_token_seconds",
            "Decode time per output token after the first.",
            ["cohort", "model"],
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(p + "tokens", "Tokens by type.", ["type", "cohort", "model"], registry=r)
        self.fallbacks = Counter(
            p + "fallbacks",
            "Requests not answered by the model planned first, by reason and by the model that was left.",
            ["reason", "cohort", "from_model"],
            registry=r,
        )
        self.upstream_failures = Counter(
            p + "upstream_failures", "Failed upstream attempts.", ["model", "backend", "reason"], registry=r
        )
        self.inflight = Gauge(p + "inflight_requests", "Requests being served now.", registry=r).only
        self.overhead = Histogram(
            p + "overhead_seconds", "Time the gateway itself added.", buckets=OVERHEAD_BUCKETS, registry=r
        ).only
        self.backend_up = Gauge(
            p + "backend_up",
            "1 when the backend takes requests (healthy, not drained, breaker not open).",
            ["model", "backend"],
            registry=r,
        )
        self.breaker_open = Gauge(
            p + "breaker_open",
            "1 when the backend's circuit breaker is open (or half-open).",
            ["model", "backend"],
            registry=r,
        )
        self.mirror_requests = Counter(
            p + "mirror_requests",
            "Shadow requests by outcome (ok, error, timeout, dropped).",
            ["model", "cohort", "outcome"],
            registry=r,
        )
        self.mirror_agreement = Counter(
            p + "mirror_agreement",
            "Shadow answer compared with the primary answer, per check.",
            ["model", "cohort", "check", "result"],
            registry=r,
        )
        self.capture_records = Counter(
            p + "capture_records_total",
            "Capture records (kind primary or shadow) by outcome: written, dropped (queue full) or error.",
            ["kind", "outcome"],
            registry=r,
        )
        self.eval_outcomes = Counter(
            p + "eval_outcomes",
            "Evaluator verdicts by source (online, shadow, pushed, feedback).",
            ["model", "cohort", "evaluator", "verdict", "source"],
            registry=r,
        )
        self.eval_fail_rate = Gauge(
            p + "eval_fail_rate", "Fail rate over the eval window.", ["model", "cohort", "evaluator"], registry=r
        )
        self.eval_gate_tripped = Gauge(
            p + "eval_gate_tripped",
            "1 while the eval gate keeps the model off the cohort.",
            ["model", "cohort"],
            registry=r,
        )
        self.genai_token_usage = Histogram(
            "gen_ai_client_token_usage",
            "OpenTelemetry GenAI metric gen_ai.client.token.usage (tokens per operation).",
            ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_token_type"],
            buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144),
            registry=r,
        )
        self.genai_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "OpenTelemetry GenAI metric gen_ai.client.operation.duration.",
            ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.classifier_fallthrough = Counter(
            p + "classifier_fallthrough_total",
            "Semantic cohort conditions taken as false because the request's vector or the rule's examples could not "
            "be had, by the condition's cohort and reason (timeout, error, unavailable, examples_unavailable).",
            ["cohort", "reason"],
            registry=r,
        )
        self.policy_info = Gauge(p + "policy_info", "The policy in force (value 1).", ["version"], registry=r)
        self.policy_reloads = Counter(p + "policy_reloads", "Policy loads by outcome.", ["outcome"], registry=r)
        self.rollout_weight = Gauge(
            p + "rollout_weight",
            "Percent of the cohort's traffic a rollout puts on its candidate.",
            ["route", "candidate"],
            registry=r,
        )
        self.rollout_state = Gauge(
            p + "rollout_state",
            "1 for the state a rollout is in (progressing, paused, rolled_back, promoted).",
            ["route", "candidate", "state"],
            registry=r,
        )
        self.rollout_transitions = Counter(
            p + "rollout_transitions_total",
            "Rollout transitions this instance decided, by the state entered.",
            ["route", "candidate", "to"],
            registry=r,
        )
        self.state_backend_up = Gauge(
            p + "state_backend_up", "1 while the fleet state store (memory, or Redis) is reachable.", registry=r
        ).only
        self.state_errors = Counter(
            p + "state_errors_total", "Failed operations on the fleet state store, by operation.", ["op"], registry=r
        )
        self.state_sync_age = Gauge(
            p + "state_sync_age_seconds", "Seconds since this instance last synced with the fleet state.", registry=r
        ).only

    def upstream_failure(self, model: str, backend: str, reason: str) -> None:
        self.upstream_failures.labels(model, backend, reason).inc()

    def set_policy(self, version: str) -> None:
        self.policy_info.clear()
        self.policy_info.labels(version).set(1)

    def observe_backends(self, backends: Iterable[BackendView]) -> None:
        """Refresh the per-backend gauges from live state (called at scrape time, so they are never stale)."""
        for backend in backends:
            self.backend_up.labels(backend.model, backend.label).set(1 if backend.available else 0)
            self.breaker_open.labels(backend.model, backend.label).set(0 if backend.breaker.state == "closed" else 1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
