"""Attempt: one upstream call's bookkeeping, held by one object and released exactly once.

An attempt takes a slot in the backend's in-flight count, a verdict for its circuit breaker, a client span and a
record in the request's attempt list. A non-streamed answer ends its attempt in dispatch; a stream's attempt
lives until the relay (or a client that went away) ends it. Either way :meth:`Attempt.finish` is the one place the
slot is given back, the breaker hears the outcome and the span ends, and a second call does nothing.
"""

from __future__ import annotations

import time

from opentelemetry.trace import Span

from gateway.context import AttemptRecord, RequestContext
from gateway.errors import UpstreamError
from gateway.spans import close_attempt_span, open_attempt_span
from gateway.telemetry.tracing import Tracing
from gateway.upstream.pool import Backend


class Attempt:
    __slots__ = ("_answered_s", "_ctx", "_open", "_started", "backend", "record", "span")

    def __init__(self, tracing: Tracing, ctx: RequestContext, backend: Backend) -> None:
        self.backend = backend
        self._ctx = ctx
        self.record = AttemptRecord(model=backend.model, backend=backend.url, number=len(ctx.attempts) + 1)
        ctx.attempts.append(self.record)
        self.span: Span = open_attempt_span(tracing, ctx, backend.model, backend.url, self.record.number)
        backend.inflight += 1
        self._started = time.perf_counter()
        self._answered_s: float | None = None
        self._open = True

    def answered(self) -> None:
        """The answer was accepted (its headers, or a stream's first event): the latency the breaker weighs."""
        self._answered_s = time.perf_counter() - self._started

    def finish(self, error: UpstreamError | None = None, *, cancelled: bool = False) -> None:
        """End the attempt: ``error`` if it failed, ``cancelled`` if nobody waits for it any more."""
        if not self._open:
            return
        self._open = False
        backend = self.backend
        backend.inflight -= 1
        latency_s = self._answered_s if self._answered_s is not None else time.perf_counter() - self._started
        if cancelled:
            backend.breaker.release()
            close_attempt_span(self._ctx, self.span, error="cancelled", error_type="cancelled")
            return
        if error is None:
            backend.breaker.record(ok=True, latency_s=latency_s)
            close_attempt_span(self._ctx, self.span, error=self._ctx.stream_error)
            return
        self.record.outcome = error.fallback_reason
        self.record.error = error.describe()
        if error.retry_after_s is not None:
            backend.cool_down(error.retry_after_s)
        if error.backend_fault:
            backend.breaker.record(ok=False, latency_s=latency_s)
        elif error.status == 429:  # backpressure is not a sign of a broken backend: no verdict
            backend.breaker.release()
        else:  # the request's own fault (a 4xx): the backend worked
            backend.breaker.record(ok=True, latency_s=latency_s)
        close_attempt_span(self._ctx, self.span, error=error.describe(), error_type=error.code or type(error).__name__)
