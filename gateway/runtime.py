"""Gateway: the composition root that owns the live parts (policy snapshot, pools, upstream client, metrics).

Everything a request needs is reached through one ``Gateway`` instance handed to the app; there are no module
globals. ``sim://NAME`` backends are simulated vLLM servers started inside this process on loopback ports, so the
embedded default policy works without a GPU.

A policy's ``semantic`` examples are embedded when it loads (:mod:`gateway.semantic_loading`): a reload whose
examples cannot be embedded is refused, but at startup an embedder that is not up yet (a vLLM pod still loading)
does not keep the gateway from serving: its semantic rules stay false until a background retry embeds them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from gateway.capture import TrafficCapture
from gateway.evals.gates import Transition
from gateway.evals.recorder import EvalRecorder
from gateway.fleet import FleetState
from gateway.mirror import ShadowDispatcher
from gateway.policy.loader import LoadedPolicy
from gateway.policy.schema import PolicySpec
from gateway.reload import PolicyReloader
from gateway.rollouts.driver import RolloutDriver
from gateway.routing.embedders import GatewayEmbedder
from gateway.routing.embedding import CachedEmbedder, EmbeddingCache
from gateway.routing.semantic import SemanticRules
from gateway.semantic_loading import SemanticLoader
from gateway.sim import ModelProfile, SimProfile, SimServer
from gateway.snapshot import PolicySnapshot
from gateway.telemetry.metrics import GatewayMetrics
from gateway.telemetry.tracing import Tracing
from gateway.upstream.affinity import ResponseAffinity
from gateway.upstream.client import UpstreamClient
from gateway.upstream.health import HealthChecker
from gateway.upstream.pool import BackendRegistry

log = logging.getLogger("gateway")

EMBEDDED_SIM_PROFILE = SimProfile(default=ModelProfile(ttft_s=0.02, per_token_s=0.005, output_tokens=24))
"""Latency that feels like a small model, so a newcomer's first stream visibly streams."""


class Gateway:
    def __init__(
        self,
        policy: LoadedPolicy,
        *,
        rng: Callable[[], float] | None = None,
        sim_profile: SimProfile = EMBEDDED_SIM_PROFILE,
        clock: Callable[[], float] = time.monotonic,
        run_health_checks: bool = True,
        tracing: Tracing | None = None,
        watch_policy: bool = True,
        state: FleetState | None = None,
    ) -> None:
        self.watch_policy = watch_policy
        self.reloader = PolicyReloader(
            policy.path,
            current=lambda: self.snapshot.policy,
            apply=self.apply_policy,
            count=lambda outcome: self.metrics.policy_reloads.labels(outcome).inc(),
        )
        self.tracing = tracing or Tracing()
        self.fleet = state or FleetState(clock=clock)
        self.responses = ResponseAffinity()
        self.limiter = self.fleet.limiter()
        self.run_health_checks = run_health_checks
        self.metrics = GatewayMetrics()
        self.snapshot = PolicySnapshot.build(policy, rng, on_fallthrough=self._fallthrough)
        self.client = UpstreamClient()
        self.registry = BackendRegistry({})
        self.embedding_cache = EmbeddingCache()
        self.embedder = CachedEmbedder(
            GatewayEmbedder(lambda: self.registry, lambda: self.client), self.embedding_cache
        )
        """What requests' semantic rules embed their text through (answers cached by text digest)."""
        self.semantic = SemanticLoader(lambda: self.client, self._resolve, clock)
        """Embeds policies' examples (startup, reload, and the background retry)."""
        self.sims: dict[str, SimServer] = {}
        self._rng = rng
        self._sim_profile = sim_profile
        self._clock = clock
        self.health = HealthChecker(lambda: self.registry, self.client, lambda: self.snapshot.policy.spec.health)
        self.recorder = EvalRecorder(policy.spec.evals, self.metrics, clock, self._gate_transition)
        self.fleet.attach(self.recorder, lambda: (self.snapshot.policy.spec, self.snapshot.version), self.metrics)
        self.rollouts = RolloutDriver(self.fleet, self.metrics, self.tracing, self.recorder.gates.tripped)
        self.capture = TrafficCapture(self.fleet.instance, self.metrics)
        self.shadows = ShadowDispatcher(
            self.client, lambda: self.registry, lambda: self.recorder, self.metrics, self.tracing, self.capture
        )
        self.shadows.on_answer = self.rollouts.observe_shadow

    async def start(self) -> None:
        await self.client.start()
        await self._start_sims(self.snapshot.policy.spec)
        self.registry = BackendRegistry.from_policy(self.snapshot.policy.spec, self._resolve, self._clock)
        if self.snapshot.semantic_pending:  # before serving; an embedder not up yet: serve, retry in the background
            await self.semantic.activate(self.snapshot.policy, self._semantic_ready)
        self.metrics.set_policy(self.snapshot.version)
        self.capture.configure(self.snapshot.policy.spec)
        self.metrics.policy_reloads.labels("loaded").inc()
        log.info("policy %s loaded from %s", self.snapshot.version, self.snapshot.policy.path)
        if self.run_health_checks:
            self.health.start()
        await self.fleet.start()
        self.rollouts.reconfigure(self.snapshot.policy.spec)
        await self.rollouts.start()
        self.reloader.start(watch=self.watch_policy and Path(self.snapshot.policy.path).exists())

    async def apply_policy(self, policy: LoadedPolicy) -> None:
        """Swap in a validated policy; pools, breakers, health and eval state of what still exists are kept.

        Raises :class:`gateway.routing.semantic.SemanticLoadError` (the reload is refused, nothing changes) when
        the policy's semantic examples cannot be embedded; examples unchanged since the current policy cost no call.
        """
        spec = policy.spec
        await self._start_sims(spec)
        semantic = await self.semantic.prepare(policy, previous=self.snapshot.semantic)
        build = PolicySnapshot.build
        snapshot = await asyncio.to_thread(build, policy, self._rng, semantic, self._fallthrough)  # regexes: off loop
        registry = BackendRegistry.from_policy(spec, self._resolve, self._clock, previous=self.registry)
        old = self.snapshot.policy.spec
        self.snapshot, self.registry = snapshot, registry  # no await in between: requests see both or neither
        self.semantic.stop_retrying()
        if self.semantic.embedders_changed(old, spec):
            self.embedding_cache.clear()  # a name now stands for another model: its old vectors mean nothing
        self.recorder.reconfigure(spec.evals, set(spec.models), {c.name for c in spec.cohorts})
        self.rollouts.reconfigure(spec)
        self.capture.configure(spec)
        self.metrics.set_policy(snapshot.version)

    async def close(self) -> None:
        await self.reloader.stop()
        await self.semantic.close()
        await self.health.stop()
        await self.rollouts.close()
        await self.fleet.close()
        await self.shadows.close()
        await self.capture.close()
        self.tracing.shutdown()
        await self.client.close()
        for sim in self.sims.values():
            await sim.stop()
        self.sims.clear()

    async def _start_sims(self, spec: PolicySpec) -> None:
        served: dict[str, list[str]] = {}
        for name, model in spec.models.items():
            for url in model.backends:
                if url.startswith("sim://"):
                    names = served.setdefault(url.removeprefix("sim://"), [])
                    if (model.served_name or name) not in names:
                        names.append(model.served_name or name)
        for sim_name, models in served.items():
            if sim_name in self.sims:
                self.sims[sim_name].state.serve(models)
            else:
                server = SimServer(models, self._sim_profile)
                await server.start("127.0.0.1", 0)
                self.sims[sim_name] = server
                log.info("embedded simulator sim://%s at %s serving %s", sim_name, server.url, models)

    def _fallthrough(self, cohort: str, reason: str) -> None:
        self.metrics.classifier_fallthrough.labels(cohort, reason).inc()

    def _semantic_ready(self, policy: LoadedPolicy, rules: SemanticRules) -> None:
        """``policy``'s examples are embedded (at startup, or by the background retry): if it is still the policy in
        force, its semantic rules count from the next request on (same version: the policy did not change)."""
        if self.snapshot.policy is policy:
            self.snapshot = self.snapshot.with_semantic(rules, self._fallthrough)

    def _resolve(self, url: str) -> str:
        if url.startswith("sim://"):
            return self.sims[url.removeprefix("sim://")].url
        return url

    @property
    def ready(self) -> bool:
        """A policy is loaded and at least one backend of some model can take requests."""
        return any(b.available for b in self.registry.all_backends())

    def model_filter(self, model: str, cohort: str) -> str | None:
        """The planner's :class:`ModelFilter`: why ``model`` must not serve ``cohort`` now, or None."""
        if self.recorder.gates.blocks(model, cohort):
            return "eval"
        return self.registry.skip_reason(model, cohort)

    def _gate_transition(self, transition: Transition) -> None:
        name = "eval_gate_tripped" if transition.tripped else "eval_gate_reset"
        attributes = {"gateway.model": transition.model, "gateway.cohort": transition.cohort}
        attributes.update({"gateway.gate.mode": transition.mode, "gateway.gate.reason": transition.reason})
        attributes["gateway.gate.via"] = transition.via
        self.tracing.event_span(name, attributes)

    def state(self) -> dict[str, object]:
        """What ``GET /admin/state`` shows: backends (health, breakers), eval windows and gates, mirroring, and the
        fleet (the state store, this instance, the live instances)."""
        return {
            "policy_version": self.snapshot.version,
            "backends": [b.snapshot() for b in self.registry.all_backends()],
            "evals": self.recorder.snapshot(),
            "mirror": self.shadows.snapshot(),
            "fleet": self.fleet.snapshot(),
        }
