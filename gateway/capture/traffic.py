"""TrafficCapture: the gateway's capture files, owned by the :class:`gateway.runtime.Gateway`.

One sink for the policy's ``capture`` (a sampled share of primary requests) and one per ``mirror.capture`` path
(shadow answers), all in the record format of :mod:`gateway.capture.record`. Each applied policy reconfigures
them (a sink whose path stays keeps its file and queue); the gateway drains them when it closes. The sampling
decision is a hash of the request id, so every instance of a fleet takes the same one for the same request.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Literal

from gateway.capture.record import Pending, kept_headers, primary_outcome
from gateway.capture.redact import Redactor
from gateway.capture.sink import CaptureSink
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.evals.answer import FinishedAnswer
from gateway.policy.schema import CaptureContent, CaptureSpec, PolicySpec, TrafficCaptureSpec
from gateway.routing.planner import unit_hash
from gateway.telemetry.metrics import GatewayMetrics

log = logging.getLogger("gateway.capture")

SHADOW_QUEUE = 1_000
"""Shadow records waiting to be written per ``mirror.capture`` file (shadows are bounded by max_inflight too)."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def instance_path(template: str, instance: str) -> Path:
    """``template`` with ``{instance}`` replaced by the instance id, made safe as one file-name part."""
    return Path(template.replace("{instance}", _UNSAFE.sub("_", instance)))


class TrafficCapture:
    def __init__(self, instance: str, metrics: GatewayMetrics) -> None:
        self.instance = instance
        self._metrics = metrics
        self._spec: TrafficCaptureSpec | None = None
        self._primary: CaptureSink | None = None
        self._shadows: dict[Path, CaptureSink] = {}
        self._retired: list[CaptureSink] = []
        self._headers: tuple[str, ...] = ()
        self._redactor: Redactor | None = Redactor()  # None: capture.hash_key names an unset variable

    def configure(self, policy: PolicySpec) -> None:
        """Follow ``policy`` (on the event loop, at start and on each reload)."""
        self._headers = kept_headers(policy)
        spec = policy.capture
        self._redactor = _redactor(spec)
        path = instance_path(spec.path, self.instance) if spec is not None else None
        sink = self._primary
        if sink is not None and (spec is None or sink.path != path):
            self._retire(sink)
            sink = None
        if spec is not None and path is not None:
            if sink is None:
                sink = CaptureSink(
                    path,
                    kind="primary",
                    max_bytes=spec.max_bytes,
                    keep=spec.keep,
                    queue_size=spec.queue,
                    metrics=self._metrics,
                )
            else:
                sink.resize(max_bytes=spec.max_bytes, keep=spec.keep, queue_size=spec.queue)
        self._spec, self._primary = spec, sink
        wanted = {
            instance_path(route.mirror.capture.path, self.instance)
            for route in policy.routes.values()
            if route.mirror is not None and route.mirror.capture is not None
        }
        for stale in [p for p in self._shadows if p not in wanted]:
            self._retire(self._shadows.pop(stale))

    def primary(self, ctx: RequestContext, answer: FinishedAnswer | None, error: GatewayError | None = None) -> None:
        """Offer the finished request ``ctx`` when it is sampled: ``capture.cohorts`` share for its cohort, else
        ``capture.sample``."""
        spec, sink = self._spec, self._primary
        if spec is None or sink is None:
            return
        cohort = ctx.decision.cohort if ctx.decision is not None else None
        share = spec.cohorts.get(cohort, spec.sample) if cohort is not None else spec.sample
        if share < 1.0 and not unit_hash("capture:" + ctx.request_id) < share:
            return
        outcome = primary_outcome(ctx, error, time.perf_counter())
        sink.offer(self._pending(ctx, "primary", spec.content, ctx.body, outcome, answer))

    def shadow(
        self,
        spec: CaptureSpec,
        origin: RequestContext,
        body: dict[str, Any],
        outcome: dict[str, Any],
        answer: FinishedAnswer | None,
        shadow: dict[str, Any],
    ) -> None:
        """Offer a shadow copy's record to the ``mirror.capture`` file ``spec`` names."""
        path = instance_path(spec.path, self.instance)
        sink = self._shadows.get(path)
        if sink is None:
            sink = self._shadows[path] = CaptureSink(
                path,
                kind="shadow",
                max_bytes=spec.max_bytes,
                keep=spec.keep,
                queue_size=SHADOW_QUEUE,
                metrics=self._metrics,
            )
        elif (sink.max_bytes, sink.keep) != (spec.max_bytes, spec.keep):
            sink.resize(max_bytes=spec.max_bytes, keep=spec.keep, queue_size=SHADOW_QUEUE)
        sink.offer(self._pending(origin, "shadow", spec.content, body, outcome, answer, shadow))

    async def close(self) -> None:
        """Write what is queued (each sink within its time bound) and end the writer threads."""
        sinks = [*self._retired, *self._shadows.values(), *([self._primary] if self._primary else [])]
        self._primary, self._shadows, self._retired = None, {}, []
        for sink in sinks:
            sink.stop()
        for sink in sinks:
            await sink.close()

    def _pending(
        self,
        ctx: RequestContext,
        kind: Literal["primary", "shadow"],
        content: CaptureContent,
        body: dict[str, Any],
        outcome: dict[str, Any],
        answer: FinishedAnswer | None,
        shadow: dict[str, Any] | None = None,
    ) -> Pending:
        """``content`` as asked, except that redaction without its secret captures no content (``none``)."""
        redactor = self._redactor
        return Pending(
            kind=kind,
            time=time.time(),
            request_id=ctx.request_id,
            instance=self.instance,
            policy_version=ctx.policy_version,
            endpoint=ctx.endpoint,
            content="none" if content == "redacted" and redactor is None else content,
            redactor=redactor or Redactor(),
            body=body,
            headers=ctx.headers,
            kept_headers=self._headers,
            api_key=ctx.client_key.name if ctx.client_key is not None else None,
            outcome=outcome,
            answer=answer,
            shadow=shadow,
        )

    def _retire(self, sink: CaptureSink) -> None:
        """A sink the policy no longer names: it writes what it has queued and ends; ``close`` waits for it."""
        sink.stop()
        self._retired.append(sink)


def _redactor(spec: TrafficCaptureSpec | None) -> Redactor | None:
    """The redactor, keyed by ``capture.hash_key`` (also for ``mirror.capture``); None when that names an unset
    variable: then nothing is captured as ``redacted`` (it is captured as ``none``) rather than text hashed without
    the secret someone meant to add."""
    if spec is None or spec.hash_key is None:
        return Redactor()
    variable = spec.hash_key.removeprefix("env:")
    secret = os.environ.get(variable, "")
    if not secret:
        log.error("capture.hash_key: %s is unset or empty; redacted records are written with content: none", variable)
        return None
    return Redactor(secret.encode())
