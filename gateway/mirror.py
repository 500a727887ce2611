"""ShadowDispatcher: send shadow copies of live requests to candidate models, in the background, bounded.

A shadow copy never slows or changes the primary answer: it starts after the primary was accepted, is never
awaited by the request, has its own timeout, and never touches retries, fallbacks or circuit breakers. Each
target model has ``max_inflight`` running copies and a queue of the same size; a copy beyond that is dropped and
counted. The shadow answer is evaluated (feeding the candidate's eval windows for the cohort) and, once the
primary has finished, compared with it. The same mechanism sends *probe* copies to models a tripped eval gate
keeps off a cohort, so their windows keep filling and the gate can reset.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.trace import Span

from gateway.capture.record import shadow_outcome
from gateway.capture.traffic import TrafficCapture
from gateway.context import RequestContext
from gateway.errors import UpstreamBadAnswer, UpstreamError, UpstreamTimeout
from gateway.evals.agreement import compare
from gateway.evals.answer import FinishedAnswer, answer_from_json
from gateway.evals.recorder import EvalRecorder
from gateway.evals.responses_answer import answer_from_response
from gateway.policy.schema import CaptureSpec
from gateway.telemetry.metrics import GatewayMetrics
from gateway.telemetry.tracing import Tracing, end_attempt, request_attributes
from gateway.transport import UpstreamRequest, build_request
from gateway.upstream.client import Timeouts, UpstreamClient
from gateway.upstream.pool import BackendRegistry
from gateway.wire import loads

log = logging.getLogger("gateway.mirror")

MAX_SHADOW_ANSWER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ShadowJob:
    model: str
    cohort: str
    reason: str  # "mirror" or "probe"
    endpoint: str
    body: dict[str, Any]
    headers: dict[str, str]
    max_inflight: int
    timeout_s: float
    primary: asyncio.Future[FinishedAnswer | None]
    capture: CaptureSpec | None = None
    primary_span: Span | None = None
    origin: RequestContext | None = None  # the primary request (finished routing), for capture records


@dataclass(frozen=True, slots=True)
class ShadowResult:
    """How one shadow copy ended: its answer (None when it failed), the status it got, the error code of a
    failure, its usage and how long it took (seconds)."""

    answer: FinishedAnswer | None
    status: int
    error: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    latency_s: float = 0.0
    served_model: str | None = None  # what the backend answered in ``model``


class _Lane:
    """One target model's capacity: ``limit`` running, ``limit`` more waiting."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = asyncio.Semaphore(limit)
        self.pending = 0


class ShadowDispatcher:
    def __init__(
        self,
        client: UpstreamClient,
        registry: Callable[[], BackendRegistry],
        recorder: Callable[[], EvalRecorder],
        metrics: GatewayMetrics,
        tracing: Tracing,
        capture: TrafficCapture,
    ) -> None:
        self._tracing = tracing
        self._traffic = capture
        self._client = client
        self._registry = registry
        self._recorder = recorder
        self._metrics = metrics
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.agreement: Counter[tuple[str, str, str, str]] = Counter()  # (model, cohort, check, result)
        self.outcomes: Counter[tuple[str, str, str]] = Counter()  # (model, cohort, outcome)
        self.on_answer: Callable[[str, str, bool, float | None], None] | None = None
        """(cohort, model, answered, latency): shadow evidence for a rollout of that model on that cohort."""

    def submit(self, job: ShadowJob) -> bool:
        """Queue ``job``; False (and counted as dropped) when its target is at capacity."""
        lane = self._lanes.get(job.model)
        if lane is None or lane.limit != job.max_inflight:
            lane = self._lanes[job.model] = _Lane(job.max_inflight)
        if lane.pending >= 2 * lane.limit:
            self._count(job, "dropped")
            return False
        lane.pending += 1
        task = asyncio.create_task(self._run(job, lane), name=f"shadow-{job.model}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    async def _run(self, job: ShadowJob, lane: _Lane) -> None:
        try:
            async with lane.running:
                result = await self._send(job)
        finally:
            lane.pending -= 1
        answer = result.answer
        if self.on_answer is not None:
            latency = None if answer is None else answer.ttft_s if answer.ttft_s is not None else answer.total_s
            self.on_answer(job.cohort, job.model, answer is not None, latency)
        checks = None
        if answer is not None:
            self._recorder().evaluate(job.model, job.cohort, answer, "shadow")
            checks = await self._compare(job, answer)
        if job.capture is not None and job.origin is not None:
            outcome = shadow_outcome(job.origin, job.model, result.status, result.error, result.usage, result.latency_s)
            shadow = {"reason": job.reason, "primary_model": job.origin.answered_by, "agreement": checks}
            self._traffic.shadow(job.capture, job.origin, job.body, outcome, answer, shadow)

    async def _compare(self, job: ShadowJob, answer: FinishedAnswer) -> dict[str, bool] | None:
        """The agreement checks with the primary answer once it is complete; None when the primary failed or
        took longer than the shadow's ``timeout_s`` to finish."""
        try:
            primary = await asyncio.wait_for(asyncio.shield(job.primary), job.timeout_s)
        except TimeoutError:
            return None
        if primary is None:
            return None
        checks = compare(primary, answer)
        for check, agreed in checks.items():
            result = "agree" if agreed else "disagree"
            self.agreement[(job.model, job.cohort, check, result)] += 1
            self._metrics.mirror_agreement.labels(job.model, job.cohort, check, result).inc()
        return checks

    async def _send(self, job: ShadowJob) -> ShadowResult:
        pool = self._registry().pools.get(job.model)
        replicas = pool.order(1) if pool is not None else []
        if not replicas:
            self._count(job, "error")
            return ShadowResult(None, 503, "no_backend_available")
        backend = replicas[0]
        request = build_request(backend, job.endpoint, job.body, {**job.headers, "x-gateway-shadow": "1"}, stream=False)
        address = urlsplit(backend.url)
        span = self._tracing.shadow_span(
            job.primary_span,
            job.endpoint,
            job.model,
            {
                **request_attributes(job.body),
                "server.address": address.hostname,
                "server.port": address.port,
                "gateway.cohort": job.cohort,
                "gateway.shadow.reason": job.reason,
            },
        )
        Tracing.inject(span, request.headers)
        result = None
        try:
            result = await self._post(job, request)
        finally:
            if result is None or result.answer is None:  # failed, timed out or cancelled: the span says so
                end_attempt(
                    span,
                    response_model=None,
                    prompt_tokens=None,
                    completion_tokens=None,
                    finish_reasons=(),
                    error_type="shadow_failed",
                )
        finished = result.answer
        if finished is not None:
            end_attempt(
                span,
                response_model=result.served_model,
                prompt_tokens=result.usage.get("prompt_tokens"),
                completion_tokens=result.usage.get("completion_tokens"),
                finish_reasons=[finished.finish_reason] if finished.finish_reason else (),
            )
        return result

    async def _post(self, job: ShadowJob, request: UpstreamRequest) -> ShadowResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            timeouts = Timeouts(job.timeout_s, job.timeout_s, total_s=job.timeout_s, pool_wait_s=job.timeout_s)
            response = await self._client.post(request.url, request.body, request.headers, timeouts, request.settings)
            status = response.status
            raw = await response.read(MAX_SHADOW_ANSWER_BYTES)
        except (TimeoutError, UpstreamTimeout):
            self._count(job, "timeout")
            return ShadowResult(None, UpstreamTimeout.status, UpstreamTimeout.code, latency_s=loop.time() - started)
        except UpstreamError as exc:
            log.debug("shadow request to %s failed: %s", job.model, exc)
            self._count(job, "error")
            return ShadowResult(None, exc.status, exc.code or exc.type, latency_s=loop.time() - started)
        elapsed = loop.time() - started
        if status != 200:
            self._count(job, "error")
            return ShadowResult(None, status, "upstream_error", latency_s=elapsed)
        try:
            parsed = loads(raw)
        except ValueError:
            self._count(job, "error")
            return ShadowResult(None, 502, UpstreamBadAnswer.code, latency_s=elapsed)
        self._count(job, "ok")
        parsed = parsed if isinstance(parsed, dict) else {}
        usage: dict[str, Any] = parsed["usage"] if isinstance(parsed.get("usage"), dict) else {}
        model: str | None = parsed["model"] if isinstance(parsed.get("model"), str) else None
        read = answer_from_response if job.endpoint == "responses" else answer_from_json
        answer = read(job.body, parsed, ttft_s=elapsed, total_s=elapsed)
        return ShadowResult(answer, status, None, usage, elapsed, model)

    def _count(self, job: ShadowJob, outcome: str) -> None:
        self.outcomes[(job.model, job.cohort, outcome)] += 1
        self._metrics.mirror_requests.labels(job.model, job.cohort, outcome).inc()

    def snapshot(self) -> dict[str, object]:
        agreement: dict[str, dict[str, dict[str, int]]] = {}
        for (model, cohort, check, result), n in sorted(self.agreement.items()):
            agreement.setdefault(f"{model}/{cohort}", {}).setdefault(check, {"agree": 0, "disagree": 0})[result] = n
        outcomes: dict[str, dict[str, int]] = {}
        for (model, cohort, outcome), n in sorted(self.outcomes.items()):
            outcomes.setdefault(f"{model}/{cohort}", {})[outcome] = n
        return {"inflight": self.inflight, "requests": outcomes, "agreement": agreement}
