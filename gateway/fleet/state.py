"""FleetState: the state that gateway instances behind one Service share, and the one for a single instance.

Shared fleet-wide (with Redis, :class:`gateway.fleet.redis_state.RedisFleetState`): eval windows and gate states
(manual trips included), pushed evals, feedback records, client-key rate limits, and the documents and leases that
rollouts keep. Per instance by design: backend health, breakers, in-flight counts, mirror budgets and Prometheus
series, since each instance has its own view of its network path and is scraped on its own.

This base class is ``memory://``: the process's own state, nothing to run, right for one instance. The request
path never awaits a ``FleetState``; only admin calls, feedback and the rollout driver do, and with a time bound.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from gateway.evals.feedback import AnsweredRequest
from gateway.evals.recorder import EvalRecorder
from gateway.policy.schema import PolicySpec
from gateway.ratelimit import RateLimiter
from gateway.telemetry.metrics import GatewayMetrics


def default_instance_id() -> str:
    """``GATEWAY_INSTANCE_ID``, else the host name (the pod's name in Kubernetes), the pid and a random tag."""
    given = os.environ.get("GATEWAY_INSTANCE_ID", "").strip()
    if given:
        return given[:128]
    return f"{socket.gethostname()[:80]}-{os.getpid()}-{secrets.token_hex(2)}"


class FleetState:
    backend = "memory"

    def __init__(self, instance: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.instance = instance or default_instance_id()
        self._clock = clock
        self._documents: dict[str, dict[str, Any]] = {}
        self._recorder: EvalRecorder | None = None
        self._policy: Callable[[], tuple[PolicySpec, str]] | None = None
        self._metrics: GatewayMetrics | None = None

    @property
    def connected(self) -> bool:
        return True

    def limiter(self) -> RateLimiter:
        """The rate limiter for this kind of state (per process here)."""
        return RateLimiter(self._clock)

    def attach(
        self, recorder: EvalRecorder, policy: Callable[[], tuple[PolicySpec, str]], metrics: GatewayMetrics
    ) -> None:
        """The parts whose state is shared; ``policy`` gives the policy in force and its version."""
        self._recorder, self._policy, self._metrics = recorder, policy, metrics
        metrics.state_backend_up.set(1)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def flush(self) -> bool:
        """Share what changed here now (after an admin action); True once the fleet has it."""
        return True

    async def claim_feedback(self, request_id: str, key: str | None) -> AnsweredRequest:
        """The answer ``key`` may score now, marked scored fleet-wide; 404 / 409 errors as the cache raises them."""
        assert self._recorder is not None
        return self._recorder.feedback.claim(request_id, key)

    def note_response(self, response_id: str, model: str, backend: str) -> None:
        """A Responses API answer produced by ``backend``: shared so that another instance can route a request
        continuing it (``previous_response_id``) there. Nothing to share with one instance."""
        return None

    async def find_response(self, response_id: str) -> tuple[str, str] | None:
        """(model, backend URL) of a response another instance produced, or None."""
        return None

    def document(self, name: str) -> dict[str, Any] | None:
        """A shared document (rollout state) as last synced; its ``version`` counts its writes."""
        return self._documents.get(name)

    def documents(self, prefix: str) -> dict[str, dict[str, Any]]:
        return {name: doc for name, doc in self._documents.items() if name.startswith(prefix)}

    async def put_document(self, name: str, doc: dict[str, Any], expected: int | None = None) -> dict[str, Any] | None:
        """Store ``doc`` if the stored version is still ``expected`` (None: whatever it is); returns the document
        as stored now (the new one, or the one that won), or None when the store could not be reached."""
        current = self._documents.get(name)
        version = int(current.get("version", 0)) if current else 0
        if expected is None or expected == version or current is None:
            current = self._documents[name] = {**doc, "version": version + 1}
        return current

    async def hold_lease(self, name: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl_s``; True while this instance holds it (one instance here)."""
        return True

    def snapshot(self) -> dict[str, object]:
        """``/admin/state``'s ``fleet`` section."""
        version = self._policy()[1] if self._policy is not None else ""
        return {
            "backend": self.backend,
            "connected": self.connected,
            "instance": self.instance,
            "instances": [{"id": self.instance, "policy_version": version, "last_seen_s": 0.0}],
        }
