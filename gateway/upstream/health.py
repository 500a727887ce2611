"""HealthChecker: active ``GET /health`` on every backend each ``health.interval_s``.

A backend is ejected after ``unhealthy_after`` failed checks in a row and restored after ``healthy_after``
passes in a row, so one slow check does not flap it. With ``health.scrape_load`` the same loop reads vLLM's
``/metrics`` for its queue (``vllm:num_requests_waiting``, ``vllm:num_requests_running``), which the pool then
weighs in when it picks a replica.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

from gateway.errors import UpstreamError
from gateway.policy.schema import HealthSpec
from gateway.upstream.client import ConnectionSettings, UpstreamClient
from gateway.upstream.pool import Backend, BackendRegistry

log = logging.getLogger("gateway.health")

_GAUGE = re.compile(rb"^(vllm:num_requests_(?:waiting|running))\{([^}]*)\}\s+([0-9.eE+-]+)", re.MULTILINE)


def parse_vllm_load(text: bytes) -> tuple[float, float]:
    """(waiting, running) of one vLLM server from its Prometheus text, summed over engines and model names.

    The queue belongs to the server, not to a model name: LoRA adapters and extra served names share the base
    model's engine (whose ``model_name`` label is the base model's), so every line counts.
    """
    waiting = running = 0.0
    for name, _labels, value in _GAUGE.findall(text):
        if name.endswith(b"waiting"):
            waiting += float(value)
        else:
            running += float(value)
    return waiting, running


class HealthChecker:
    def __init__(
        self,
        registry: Callable[[], BackendRegistry],
        client: UpstreamClient,
        spec: Callable[[], HealthSpec],
        on_change: Callable[[Backend], None] = lambda backend: None,
    ) -> None:
        self._registry = registry
        self._client = client
        self._spec = spec
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="health-checker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._spec().interval_s)
            await self.check_all()

    async def check_all(self) -> None:
        backends = list(self._registry().all_backends())
        await asyncio.gather(*(self.check(b) for b in backends))

    async def check(self, backend: Backend) -> None:
        spec = self._spec()
        ok, error = await self._probe(backend, spec.check_timeout_s)
        before = backend.healthy
        if ok:
            backend.check_passes += 1
            backend.check_failures = 0
            backend.last_check_error = ""
            if not backend.healthy and backend.check_passes >= spec.healthy_after:
                backend.healthy = True
        else:
            backend.check_failures += 1
            backend.check_passes = 0
            backend.last_check_error = error
            if backend.healthy and backend.check_failures >= spec.unhealthy_after:
                backend.healthy = False
        if backend.healthy != before:
            state = "restored" if backend.healthy else "ejected"
            log.warning("backend %s (%s) %s: %s", backend.label, backend.url, state, error or "checks pass")
            self._on_change(backend)
        if ok and spec.scrape_load:
            await self._scrape(backend, spec.check_timeout_s)

    async def _probe(self, backend: Backend, timeout_s: float) -> tuple[bool, str]:
        try:
            status, _ = await self._client.get(backend.url + "/health", timeout_s, *_auth(backend))
        except UpstreamError as exc:
            return False, exc.message
        return (True, "") if status == 200 else (False, f"/health answered {status}")

    async def _scrape(self, backend: Backend, timeout_s: float) -> None:
        try:
            status, body = await self._client.get(backend.url + "/metrics", timeout_s, *_auth(backend))
        except UpstreamError:
            return
        if status == 200:
            backend.waiting, backend.running = parse_vllm_load(body)


def _auth(backend: Backend) -> tuple[dict[str, str], ConnectionSettings]:
    """The backend's own key (a vLLM started with ``--api-key`` guards ``/metrics`` too) and its TLS settings."""
    headers = {"authorization": backend.authorization} if backend.authorization is not None else {}
    return headers, backend.connection
