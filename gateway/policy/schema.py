"""The routing policy, as strict typed models (routing_policies/README.md; docs/architecture.md).

Phase one of loading: shapes and ranges. Unknown keys are rejected (``extra="forbid"``) so a typo never passes
silently, and every model is frozen because a loaded policy is an immutable snapshot. Cross-references between
sections (a route naming a model, say) are checked afterwards in :mod:`gateway.policy.checks`, where the YAML
positions are at hand.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, model_validator

from gateway.policy.cohort_schema import CohortSpec, Match, SemanticSpec
from gateway.policy.types import Fraction, NameOrNames, PositiveFloat, PositiveInt, Scalar, Strict, ValueMatch

__all__ = ["CohortSpec", "Match", "NameOrNames", "Scalar", "SemanticSpec", "ValueMatch"]  # re-exported

SOURCES = "sources"
"""The reserved fallback entry that expands to the merged model's source models."""


class TlsSpec(Strict):
    """How the gateway checks an ``https://`` backend and proves itself to it. Verification is on by default."""

    verify: bool = Field(default=True, description="check the backend's certificate (and its host name)")
    ca_file: str | None = Field(default=None, description="PEM bundle of CAs to trust instead of the system's")
    cert_file: str | None = Field(default=None, description="client certificate (PEM) for mutual TLS")
    key_file: str | None = Field(default=None, description="the client certificate's private key (PEM)")

    @model_validator(mode="after")
    def _key_needs_cert(self) -> TlsSpec:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("'key_file' needs 'cert_file'")
        return self


class ModelSpec(Strict):
    """One model of the registry: a name the gateway knows and the vLLM replicas that serve it."""

    kind: Literal["base", "source", "merged", "candidate", "embedding"]
    backends: list[str] = Field(min_length=1, description="vLLM base URLs (http://host:port) or sim://NAME")
    served_name: str | None = Field(
        default=None, description="the name vLLM serves it under; defaults to the registry name"
    )
    sources: list[str] = Field(default_factory=list, description="models a merged checkpoint was merged from")
    max_context: PositiveInt | None = Field(default=None, description="context window in tokens")
    api_key: str | None = Field(
        default=None, pattern=r"^env:[A-Za-z_][A-Za-z0-9_]*$", description="env:VAR holding the backend's own key"
    )
    description: str | None = None
    tls: TlsSpec | None = Field(default=None, description="TLS to https:// backends: private CA, client cert (mTLS)")
    max_connections: PositiveInt = Field(
        default=4096, description="requests in flight per replica; one more waits health.timeouts.pool_wait_s"
    )


CaptureContent = Literal["full", "redacted", "none"]
"""What a capture record keeps of the request: all of it, its structure with text replaced by same-length hashes,
or the routing features only."""


class CaptureSpec(Strict):
    """A route's shadow answers as capture records (the format of the policy's ``capture``), for offline review."""

    path: str = Field(min_length=1, description="JSONL file; '{instance}' is replaced by the fleet instance id")
    max_bytes: PositiveInt = 10 * 1024 * 1024
    keep: Annotated[int, Field(ge=0)] = 3
    content: CaptureContent = Field(default="full", description="full | redacted | none")


class TrafficCaptureSpec(Strict):
    """A sampled share of primary requests and their outcomes as JSONL: the input of ``llm-gateway replay`` and a
    dataset for ``llm-gateway eval`` (docs/capture.md)."""

    path: str = Field(min_length=1, description="JSONL file; '{instance}' is replaced by the fleet instance id")
    sample: Fraction = Field(default=0.01, description="share of primary requests captured")
    cohorts: dict[str, Fraction] = Field(default_factory=dict, description="per-cohort shares, overriding sample")
    content: CaptureContent = Field(default="redacted", description="full | redacted | none")
    headers: list[str] = Field(
        default_factory=list, description="request headers kept besides those the policy's rules read"
    )
    max_bytes: PositiveInt = Field(default=100 * 1024 * 1024, description="a file is rotated at this size")
    keep: Annotated[int, Field(ge=0)] = Field(default=5, description="rotated files kept")
    queue: PositiveInt = Field(default=10_000, description="records waiting to be written; more are dropped")
    hash_key: str | None = Field(
        default=None,
        pattern=r"^env:[A-Za-z_][A-Za-z0-9_]*$",
        description="env:VAR: a secret that keys the hashes of redacted text",
    )


class MirrorSpec(Strict):
    """Shadow copies of a sampled share of the route's traffic, sent to candidate models."""

    to: list[str] = Field(min_length=1)
    sample: Fraction = 0.1
    max_inflight: PositiveInt = 32
    timeout_s: PositiveFloat = 30.0
    capture: CaptureSpec | None = None


STICKY_HEADER = re.compile(r"header:[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")


class RolloutSpec(Strict):
    """Move the cohort's traffic from the route's ``target`` (the incumbent) to ``candidate``, step by step, while
    the candidate keeps passing its analysis; move it back (``rollback``) or hold it (``pause``) when it fails."""

    candidate: str = Field(min_length=1)
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: [5, 25, 50, 100], min_length=1, max_length=20, description="percent on the candidate"
    )
    step_s: PositiveFloat = Field(default=600, le=30 * 86_400, description="at least this long at each step")
    min_samples: PositiveInt = Field(default=200, le=1_000_000, description="candidate answers at a step to advance")
    sticky: str = Field(default="request", description="assignment key: user | api_key | header:NAME | request")
    max_error_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    max_latency_ratio: PositiveFloat = Field(default=1.5, description="candidate p95 / incumbent p95, same step")
    on_failure: Literal["rollback", "pause"] = "rollback"


class RouteSpec(Strict):
    """Where a cohort's requests go: one ``target`` or a weighted ``split``, then the ``fallback`` chain."""

    target: str | None = None
    split: dict[str, Annotated[float, Field(gt=0.0)]] | None = Field(default=None, min_length=1)
    sticky: Literal["user"] | None = None
    fallback: list[str] | Literal["sources"] = Field(default_factory=list)
    mirror: MirrorSpec | None = None
    balance: Literal["least_inflight", "prefix", "session"] = Field(
        default="least_inflight", description="how a replica is picked among a model's backends"
    )
    prefix_chars: PositiveInt = Field(default=256, description="balance: prefix hashes this many leading chars")
    max_tokens: PositiveInt | None = Field(default=None, description="reject requests asking for more tokens")
    session_header: str | None = Field(default=None, description="balance: session hashes this header, else user")
    rollout: RolloutSpec | None = Field(default=None, description="step a candidate up on this cohort")

    @model_validator(mode="after")
    def _target_xor_split(self) -> RouteSpec:
        if (self.target is None) == (self.split is None):
            raise ValueError("a route needs exactly one of 'target' or 'split'")
        if self.sticky is not None and self.split is None:
            raise ValueError("'sticky' only applies to a 'split'")
        if self.session_header is not None and self.balance != "session":
            raise ValueError("'session_header' only applies to 'balance: session'")
        return self

    @property
    def fallback_entries(self) -> list[str]:
        return [SOURCES] if isinstance(self.fallback, str) else list(self.fallback)


class BreakerSpec(Strict):
    """A backend's circuit breaker: open on a run of failures or a high error rate (or p99), probe after open_s."""

    consecutive_failures: PositiveInt = 5
    error_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    window_s: PositiveFloat = 30.0
    min_requests: PositiveInt = 20
    open_s: PositiveFloat = 30.0
    half_open_probes: PositiveInt = 1
    max_p99_s: PositiveFloat | None = None


class TimeoutsSpec(Strict):
    """Seconds. ``total_s`` is a hard deadline for the whole answer, streamed or not."""

    connect_s: PositiveFloat = 2.0
    first_byte_s: PositiveFloat = Field(default=30.0, description="wait for the answer's headers, then each chunk")
    total_s: PositiveFloat = 300.0
    pool_wait_s: PositiveFloat = Field(
        default=1.0, description="wait for a free connection when a replica is at max_connections (then fall back)"
    )


class HealthSpec(Strict):
    interval_s: PositiveFloat = 5.0
    check_timeout_s: PositiveFloat = 5.0
    unhealthy_after: PositiveInt = 2
    healthy_after: PositiveInt = 2
    scrape_load: bool = Field(default=False, description="weigh vLLM's own queue (scraped /metrics) in balancing")
    resend_on_disconnect: bool = Field(
        default=False,
        description="send a request on (next replica or fallback) when a backend dropped the connection after it had "
        "the request, e.g. a replica killed mid-generation; off: it may still be generating, so a POST is sent once",
    )
    breaker: BreakerSpec = BreakerSpec()
    timeouts: TimeoutsSpec = TimeoutsSpec()


class WindowSpec(Strict):
    size: PositiveInt = 200
    min_samples: PositiveInt = 30
    max_age_s: PositiveFloat | None = Field(default=None, description="also forget outcomes older than this")


class CohortEvalSpec(Strict):
    """Online evaluation of one cohort's answers, on top of the always-on evaluators."""

    evaluators: list[str] = Field(default_factory=list)
    refusal_patterns: list[str] | None = Field(default=None, description="regexes for no_refusal; else the default")
    ttft_slo_s: PositiveFloat | None = None
    total_slo_s: PositiveFloat | None = None


class GateSpec(Strict):
    """Takes ``models`` off ``cohorts`` while their fail rate on ``evaluators`` exceeds ``max_fail_rate``."""

    models: list[str] = Field(min_length=1)
    cohorts: list[str] = Field(min_length=1)
    evaluators: list[str] = Field(min_length=1)
    max_fail_rate: Fraction
    reset_fail_rate: Fraction | None = None
    min_samples: PositiveInt | None = None
    probe_sample: Fraction = 0.1
    mode: Literal["enforce", "observe"] = "enforce"

    @model_validator(mode="after")
    def _hysteresis(self) -> GateSpec:
        if self.reset_fail_rate is not None and self.reset_fail_rate > self.max_fail_rate:
            raise ValueError("reset_fail_rate must not exceed max_fail_rate")
        return self


PromotionEvaluator = Literal[
    "task_completion",
    "json_valid",
    "json_schema",
    "tool_call_valid",
    "tool_selection",
    "refusal_correct",
    "groundedness_overlap",
    "not_truncated",
    "no_refusal",
    "groundedness",
    "helpfulness",
]
"""The offline evaluators of ``llm-gateway eval`` (``gateway.promote.scoring``; the last two need ``--judge``)."""


class PromotionSpec(Strict):
    """When ``llm-gateway eval`` lets a candidate take a cohort from its sources (docs/promotion.md)."""

    evaluators: list[PromotionEvaluator] | None = Field(
        default=None, description="required evaluators; default: those applying to at least min_cases cases"
    )
    tolerance: Fraction = Field(default=0.05, description="how much worse than the best baseline a pass rate may be")
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95
    min_cases: PositiveInt = Field(default=20, description="fewer cases than this never earn a cohort")
    max_p95_ttft_s: PositiveFloat | None = None
    max_p95_total_s: PositiveFloat | None = None
    max_latency_ratio: PositiveFloat | None = Field(default=None, description="p95 total vs the incumbent's")
    max_tokens_ratio: PositiveFloat | None = Field(default=None, description="mean output tokens vs the incumbent's")
    groundedness_min: Fraction = Field(default=0.5, description="groundedness_overlap passes at this share")
    judge_min_score: Annotated[int, Field(ge=1, le=5)] = 4
    shadow_sample: Fraction = Field(default=0.1, description="mirror share proposed for cohorts not earned")
    gate_max_fail_rate: Fraction = Field(default=0.05, description="max_fail_rate of the proposed eval gate")
    statistics: Literal["paired", "independent"] = Field(
        default="paired", description="paired: compare the models case by case where both answered the same case"
    )
    multiplicity: Literal["holm", "none"] = Field(
        default="holm", description="control of the error across every cohort x evaluator comparison of a run"
    )


class EvalsSpec(Strict):
    window: WindowSpec = WindowSpec()
    cohorts: dict[str, CohortEvalSpec] = Field(default_factory=dict)
    gates: list[GateSpec] = Field(default_factory=list)
    promotion: PromotionSpec | None = None
    feedback_cache_size: PositiveInt = Field(default=100_000, description="request ids remembered for feedback")
    feedback_ttl_s: PositiveFloat = Field(
        default=3_600, le=30 * 86_400, description="how long an answer may be scored through POST /v1/feedback"
    )
    _gate_by_pair: dict[tuple[str, str], GateSpec | None] = PrivateAttr(default_factory=dict)

    def gate_for(self, model: str, cohort: str) -> GateSpec | None:
        """The gate that governs ``model`` on ``cohort``: the first one listing both (looked up once per pair: the
        request path asks several times per request)."""
        key = (model, cohort)
        try:
            return self._gate_by_pair[key]
        except KeyError:
            gate = next((g for g in self.gates if model in g.models and cohort in g.cohorts), None)
            self._gate_by_pair[key] = gate
            return gate


class TelemetrySpec(Strict):
    record_content: bool = Field(
        default=False, description="put prompts and completions on spans (off: privacy by default)"
    )


class LimitsSpec(Strict):
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    body_timeout_s: PositiveFloat = Field(default=30.0, description="a client must send its whole body within this")
    max_answer_bytes: PositiveInt = Field(
        default=64 * 1024 * 1024, description="largest non-streamed backend answer relayed (larger: 502)"
    )
    max_messages: PositiveInt = 2048
    forward_headers: list[str] = Field(
        default_factory=list, description="client request headers passed on to backends (all others are dropped)"
    )


class RateLimitSpec(Strict):
    requests_per_min: PositiveInt | None = None
    tokens_per_min: PositiveInt | None = None


class KeySpec(Strict):
    """A client key: who may call, which models and cohorts it may reach, and how fast."""

    key: str = Field(pattern=r"^(env:[A-Za-z_][A-Za-z0-9_]*|sha256:[0-9a-fA-F]{64})$")
    models: list[str] | None = None
    cohorts: list[str] | None = None
    rate_limit: RateLimitSpec | None = None


class PolicySpec(Strict):
    """A whole routing policy file."""

    version: Literal[1]
    revision: str | None = Field(default=None, description="a label of yours, shown next to the content hash")
    public_models: list[str] = Field(default_factory=list)
    models: dict[str, ModelSpec] = Field(min_length=1)
    cohorts: list[CohortSpec] = Field(min_length=1)
    routes: dict[str, RouteSpec] = Field(min_length=1)
    health: HealthSpec = HealthSpec()
    evals: EvalsSpec = EvalsSpec()
    limits: LimitsSpec = LimitsSpec()
    telemetry: TelemetrySpec = TelemetrySpec()
    capture: TrafficCaptureSpec | None = Field(default=None, description="write a share of requests as JSONL")
    keys: dict[str, KeySpec] | None = Field(default=None, description="client keys; without it the gateway is open")

    def served_name(self, model: str) -> str:
        return self.models[model].served_name or model

    @property
    def default_cohort(self) -> str:
        return next(c.name for c in self.cohorts if c.default)

    def route_for(self, cohort: str) -> tuple[str, RouteSpec]:
        """The route serving ``cohort``: its own, else the default cohort's."""
        if cohort in self.routes:
            return cohort, self.routes[cohort]
        name = self.default_cohort
        return name, self.routes[name]
