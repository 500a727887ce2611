"""RedisFleetState: fleet state in Redis (or Valkey), synced in the background, never on the request path.

Every ``sync_s`` (0.5 s by default) an instance runs one sync of two pipelined round trips: it sends what changed
here (eval outcomes, gate decisions, answered requests for feedback, what each rate-limited key took, a heartbeat)
and reads what the fleet has (window counters, gate states, bucket levels, live instances, documents), then reads
the windows that other instances changed. So a shared figure is at most about two syncs old (1 s by default, plus
one Redis round trip): a gate tripped by one instance's evidence routes every instance within 2 s.

When Redis is slow, stalled or gone, a sync fails after ``timeout_s``: the instance logs the outage once, sets
``llm_gateway_state_backend_up`` to 0, keeps serving on its local state and keeps what it has to send for the
next sync; when Redis answers again it logs once more and merges (see :mod:`gateway.fleet.evidence` for gates).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.evals.feedback import AnsweredRequest, FeedbackAlreadyRecorded
from gateway.evals.recorder import EvalRecorder
from gateway.fleet import scripts
from gateway.fleet.evidence import EvidenceSync, Handler
from gateway.fleet.limits import FleetRateLimiter
from gateway.fleet.state import FleetState
from gateway.fleet.url import StateUrl
from gateway.policy.schema import PolicySpec
from gateway.ratelimit import RateLimiter
from gateway.telemetry.metrics import GatewayMetrics

log = logging.getLogger("gateway.fleet")

RESPONSE_TTL_S = 3600.0
"""How long a Responses API answer's backend is remembered for continuations through other instances."""
RESPONSE_SLICE_S = 60.0
FORGET_INSTANCE_S = 600.0
"""An instance that sent no heartbeat for this long is removed from the list."""


@dataclass(frozen=True)
class InstanceSeen:
    id: str
    policy_version: str | None
    last_seen_s: float


class RedisFleetState(FleetState):
    backend = "redis"

    def __init__(self, url: StateUrl, instance: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(instance, clock)
        self.url = url
        self.live_s = max(5.0, 4 * url.sync_s)  # a heartbeat younger than this counts as a live instance
        self._redis = aioredis.Redis.from_url(
            url.redis_url,
            socket_timeout=url.timeout_s,
            socket_connect_timeout=url.timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._gate_write = self._redis.register_script(scripts.GATE_WRITE)
        self._buckets = self._redis.register_script(scripts.BUCKETS)
        self._claim = self._redis.register_script(scripts.FEEDBACK_CLAIM)
        self._lease = self._redis.register_script(scripts.LEASE)
        self._document_put = self._redis.register_script(scripts.DOCUMENT_PUT)
        self._limiter = FleetRateLimiter(clock)
        self._evidence: EvidenceSync | None = None
        self._connected = False
        self._outage_since: float | None = None
        self._synced_at: float | None = None
        self._instances: list[InstanceSeen] = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._forgetting: asyncio.Task[None] | None = None
        self._responses: deque[tuple[str, str, str]] = deque(maxlen=10_000)  # to share at the next sync

    @property
    def connected(self) -> bool:
        return self._connected

    def limiter(self) -> RateLimiter:
        return self._limiter

    def attach(
        self, recorder: EvalRecorder, policy: Callable[[], tuple[PolicySpec, str]], metrics: GatewayMetrics
    ) -> None:
        super().attach(recorder, policy, metrics)
        metrics.state_backend_up.set(0)
        self._evidence = EvidenceSync(recorder, self.url.prefix, lambda: policy()[0])

    async def start(self) -> None:
        """One sync before serving (bounded by ``timeout_s``), so a new instance starts with the fleet's gates;
        then the background loop."""
        await self.flush()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="fleet-state-sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), self.url.timeout_s)  # what this instance still had to send
        await self._redis.aclose()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.url.sync_s)
            await self.flush()
            if self._metrics is not None:
                self._metrics.state_sync_age.set(self.sync_age_s())

    async def flush(self) -> bool:
        async with self._lock:
            try:
                async with asyncio.timeout(self.url.timeout_s * 2):
                    await self._sync()
            except (RedisError, OSError, TimeoutError, ValueError, TypeError, KeyError, IndexError) as exc:
                # a store that fails, or holds data this version cannot read, is an outage: never the loop's end
                self._down(exc)
                return False
            self._up()
            return True

    async def _sync(self) -> None:
        assert self._evidence is not None and self._policy is not None
        spec, version = self._policy()
        p, now = self.url.prefix, time.time()
        got: dict[str, Any] = {}

        def keep(name: str) -> Handler:
            return lambda value: got.__setitem__(name, value)

        pipe = self._redis.pipeline(transaction=True)
        pipe.scripts.update((self._gate_write, self._buckets))  # type: ignore[arg-type]  # reloaded after a restart
        handlers, undo = self._evidence.push(pipe, self._gate_write)
        responses = [self._responses.popleft() for _ in range(len(self._responses))]
        if responses:
            name = f"{p}:responses:{int(now // RESPONSE_SLICE_S)}"
            pipe.hset(name, mapping={rid: f"{model}\x1f{backend}" for rid, model, backend in responses})
            pipe.expire(name, int(RESPONSE_TTL_S + RESPONSE_SLICE_S))
            handlers += [None, None]
        pipe.zadd(f"{p}:instances", {self.instance: now})
        pipe.hset(f"{p}:instance-info", self.instance, json.dumps({"policy_version": version}))
        handlers += [None, None]
        keys = spec.keys or {}
        limits = [(name, key.rate_limit) for name, key in keys.items() if key.rate_limit is not None]
        buckets = self._limiter.prepare(limits)
        if buckets:
            names = [f"{p}:rl:{json.dumps([key, kind])}" for key, kind, _, _ in buckets]
            args = [x for _, _, per_minute, held in buckets for x in (per_minute, held)]
            live_ms = int(self.live_s * 1000)
            pipe.evalsha(self._buckets.sha, len(names), *names, self.instance, live_ms, *args)
            handlers.append(keep("grants"))
        handlers += self._evidence.pull(pipe)
        pipe.zrange(f"{p}:instances", 0, -1, withscores=True)
        pipe.hgetall(f"{p}:instance-info")
        pipe.hgetall(f"{p}:documents")
        handlers += [keep("instances"), keep("info"), keep("documents")]
        try:
            results = await pipe.execute()
        except BaseException:
            undo()
            self._responses.extendleft(reversed(responses))
            self._limiter.offline()
            raise
        finally:
            await pipe.reset()  # type: ignore[no-untyped-call]  # its connection back to the pool
        for handler, result in zip(handlers, results, strict=True):
            if handler is not None:
                handler(result)
        self._heartbeats(got["instances"], got["info"], now)
        answers = got.get("grants", [])
        grants = {
            (k, kind): (float(answers[2 * i]), int(answers[2 * i + 1])) for i, (k, kind, _, _) in enumerate(buckets)
        }
        self._limiter.settle(grants)
        self._documents = {k.decode(): _json_object(v) for k, v in got["documents"].items()}
        async with self._redis.pipeline(transaction=False) as reads:
            changed = self._evidence.changed_windows(reads)
            if changed:
                self._evidence.apply_windows(changed, await reads.execute())

    def _heartbeats(self, ranked: list[tuple[bytes, float]], info: dict[bytes, bytes], now: float) -> None:
        """Keep the list of instances (for ``/admin/state``)."""
        instances, stale = [], []
        for raw, seen in ranked:
            ident = raw.decode(errors="replace")
            age = max(0.0, now - seen)
            if age > FORGET_INSTANCE_S:
                stale.append(ident)
                continue
            version = _json_object(info.get(raw)).get("policy_version")
            instances.append(InstanceSeen(ident, str(version) if version is not None else None, age))
        self._instances = instances
        if stale:
            self._forgetting = asyncio.get_running_loop().create_task(self._forget(stale))

    async def _forget(self, stale: list[str]) -> None:
        p = self.url.prefix
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self.url.timeout_s):
                await self._redis.zrem(f"{p}:instances", *stale)
                await self._redis.hdel(f"{p}:instance-info", *stale)

    def _count_error(self, op: str) -> None:
        if self._metrics is not None:
            self._metrics.state_errors.labels(op).inc()

    def _down(self, exc: BaseException) -> None:
        assert self._metrics is not None
        self._count_error("sync")
        self._metrics.state_backend_up.set(0)
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning(
                "fleet state: Redis at %s unreachable (%s); serving on this instance's state until it returns",
                self.url.shown,
                reason,
            )
        self._connected = False

    def _up(self) -> None:
        assert self._metrics is not None
        self._metrics.state_backend_up.set(1)
        self._synced_at = time.monotonic()
        self._metrics.state_sync_age.set(0)
        if self._outage_since is not None:
            log.warning(
                "fleet state: Redis at %s reachable again after %.1fs; merged", self.url.shown, self.sync_age_s()
            )
            self._outage_since = None
        elif not self._connected:
            log.info("fleet state: connected to Redis at %s (prefix %s)", self.url.shown, self.url.prefix)
        self._connected = True

    def sync_age_s(self) -> float:
        since = self._outage_since if self._outage_since is not None else self._synced_at
        return 0.0 if since is None else time.monotonic() - since

    async def claim_feedback(self, request_id: str, key: str | None) -> AnsweredRequest:
        assert self._recorder is not None and self._evidence is not None
        local = self._recorder.feedback
        evidence = self._evidence
        found: Any = None
        if self._connected:
            ttl_ms = int(self._recorder.spec.feedback_ttl_s * 1000)
            keys = [evidence.feedback_scored_key(key, request_id), *evidence.feedback_slices(time.time())]
            try:
                async with asyncio.timeout(self.url.timeout_s):
                    found = await self._claim(keys=keys, args=[evidence.feedback_field(key, request_id), ttl_ms])
            except (RedisError, OSError, TimeoutError):
                self._count_error("feedback")
        if found == b"scored":
            local.mark_scored(request_id, key)
            raise FeedbackAlreadyRecorded("feedback for this request id was already recorded", param="request_id")
        if isinstance(found, bytes):
            model, cohort, _ = found.decode().split("\x1f", 2)
            local.mark_scored(request_id, key)
            return AnsweredRequest(model, cohort, scored=True)
        answered = local.claim(request_id, key)  # not in the fleet's store (yet), or Redis is down
        evidence.scored(key, request_id)
        return answered

    def note_response(self, response_id: str, model: str, backend: str) -> None:
        self._responses.append((response_id, model, backend))

    async def find_response(self, response_id: str) -> tuple[str, str] | None:
        if not self._connected:
            return None
        now = time.time()
        slices = range(int(now // RESPONSE_SLICE_S), int((now - RESPONSE_TTL_S) // RESPONSE_SLICE_S) - 1, -1)
        try:
            async with asyncio.timeout(self.url.timeout_s):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for i in slices:
                        pipe.hget(f"{self.url.prefix}:responses:{i}", response_id)
                    found = await pipe.execute()
        except (RedisError, OSError, TimeoutError):
            self._count_error("response")
            return None
        for raw in found:
            if isinstance(raw, bytes):
                model, _, backend = raw.decode(errors="replace").partition("\x1f")
                return model, backend
        return None

    async def put_document(self, name: str, doc: dict[str, Any], expected: int | None = None) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(self.url.timeout_s):
                stored = await self._document_put(
                    keys=[f"{self.url.prefix}:documents"],
                    args=[name, json.dumps(doc), "" if expected is None else expected],
                )
        except (RedisError, OSError, TimeoutError):
            self._count_error("document")
            return None
        current = self._documents[name] = _json_object(stored)
        return current

    async def hold_lease(self, name: str, ttl_s: float) -> bool:
        """Take or renew the lease; False when another instance holds it or Redis cannot say (nobody drives
        then, rather than two instances at once)."""
        try:
            async with asyncio.timeout(self.url.timeout_s):
                held = await self._lease(
                    keys=[f"{self.url.prefix}:lease:{name}"], args=[self.instance, max(1, int(ttl_s * 1000))]
                )
        except (RedisError, OSError, TimeoutError):
            self._count_error("lease")
            return False
        return bool(held)

    def snapshot(self) -> dict[str, object]:
        version = self._policy()[1] if self._policy is not None else None
        instances = self._instances or [InstanceSeen(self.instance, version, self.sync_age_s())]
        return {
            "backend": self.backend,
            "connected": self._connected,
            "instance": self.instance,
            "url": self.url.shown,
            "prefix": self.url.prefix,
            "sync_s": self.url.sync_s,
            "sync_age_s": round(self.sync_age_s(), 3),
            "instances": [
                {"id": i.id, "policy_version": i.policy_version, "last_seen_s": round(i.last_seen_s, 3)}
                for i in instances
            ],
        }


def _json_object(raw: bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
