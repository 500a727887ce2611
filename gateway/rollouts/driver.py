"""RolloutDriver: runs every route's ``rollout``: the current weight for the request path, the evidence of each
step, and (on the one instance holding the ``rollouts`` lease) the transitions.

State lives in fleet documents (:mod:`gateway.fleet`), one per (route, candidate), versioned: the instance holding
the lease writes a transition only over the version it judged (an operator's action, through any instance, wins),
and every instance applies the stored state at each tick (0.5 s; the fleet syncs documents every 0.5 s too), so
all instances serve the same step within about a second. Each instance publishes its own evidence of the current
step; the driver adds up every instance's. With ``memory://`` the state lives in this process and a restart
begins again at the first step; with Redis a restarted fleet resumes at its step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.context import RequestContext
from gateway.errors import InvalidRequest, RolloutConflict, StateUnavailable
from gateway.fleet import FleetState
from gateway.policy.schema import PolicySpec, RolloutSpec
from gateway.rollouts.analysis import STATES, RolloutState, Verdict, judge
from gateway.rollouts.evidence import StepEvidence
from gateway.telemetry.metrics import GatewayMetrics
from gateway.telemetry.tracing import Tracing

log = logging.getLogger("gateway.rollouts")

Key = tuple[str, str]  # (route, candidate)
TICK_S = 0.5
LEASE = "rollouts"
ACTIONS = ("pause", "resume", "abort", "promote")


def document_name(key: Key) -> str:
    return "rollout:" + json.dumps(list(key), separators=(",", ":"))


class RolloutDriver:
    def __init__(
        self,
        fleet: FleetState,
        metrics: GatewayMetrics,
        tracing: Tracing,
        blocked: Callable[[str, str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fleet = fleet
        self._metrics = metrics
        self._tracing = tracing
        self._blocked = blocked  # (model, cohort): its eval gate is tripped
        self._clock = clock
        self._specs: dict[Key, tuple[RolloutSpec, str]] = {}  # the rollout and its cohort
        self.states: dict[Key, RolloutState] = {}
        self._evidence: dict[Key, StepEvidence] = {}
        self._published: dict[Key, tuple[int, int, int]] = {}
        self._weights: dict[str, tuple[str, float]] = {}  # route → (candidate, percent), read by the request path
        self._route_of: dict[str, str] = {}  # cohort → the route that serves it
        self._task: asyncio.Task[None] | None = None
        self._ending: asyncio.Task[dict[str, Any] | None] | None = None  # the last "ended" write, kept referenced

    def reconfigure(self, policy: PolicySpec) -> None:
        """A (re)loaded policy: rollouts of (route, candidate) pairs it keeps keep their state; others end."""
        specs = {
            (route, spec.rollout.candidate): (spec.rollout, route)
            for route, spec in policy.routes.items()
            if spec.rollout is not None
        }
        for key in [k for k in self.states if k not in specs]:
            self._end(key)
        self._specs = specs
        self._route_of = {cohort.name: policy.route_for(cohort.name)[0] for cohort in policy.cohorts}
        for key in specs:
            if key not in self.states:
                self.states[key] = RolloutState(*key, since=self._clock(), step_id=0)
                self._evidence[key] = StepEvidence(0)
            self._apply_fleet(key)
            self._show(key)

    def weight(self, route: str, candidate: str) -> float:
        """The candidate's percent of the route's traffic now (the request path's only question)."""
        found = self._weights.get(route)
        return found[1] if found is not None and found[0] == candidate else 0.0

    def observe(self, ctx: RequestContext) -> None:
        """A finished request of a route with a rollout: the candidate's attempts, and whose answer it was."""
        plan = ctx.plan
        if plan is None or plan.rollout_candidate is None:
            return
        key = (plan.route, plan.rollout_candidate)
        evidence = self._evidence.get(key)
        if evidence is None or self.weight(*key) != plan.rollout_weight:
            return  # no rollout now, or the request was planned at an earlier step
        if plan.on_candidate and any(s.model == plan.rollout_candidate for s in plan.skipped):
            evidence.add_attempt(True)  # assigned to the candidate, which its breaker (or health) ruled out
        for attempt in ctx.attempts:
            if attempt.model == plan.rollout_candidate:
                evidence.add_attempt(attempt.outcome != "ok" or ctx.stream_error is not None)
        answered, target = ctx.answered_by, plan.route_spec.target
        if (
            ctx.first_byte_at is None
            or ctx.stream_error is not None
            or answered not in (plan.rollout_candidate, target)
        ):
            return
        evidence.add_answer(answered == plan.rollout_candidate, ctx.first_byte_at - ctx.started)

    def observe_shadow(self, cohort: str, model: str, ok: bool, latency_s: float | None) -> None:
        """A shadow copy to a rollout's candidate on its cohort: evidence of the step like a primary answer."""
        route = self._route_of.get(cohort)
        evidence = self._evidence.get((route, model)) if route is not None else None
        if evidence is None:
            return
        evidence.add_attempt(not ok)
        if ok and latency_s is not None:
            evidence.add_answer(True, latency_s)

    async def start(self) -> None:
        await self.tick()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="rollouts")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self.tick()
            except Exception:  # a bug here must not stop rollouts for good
                log.exception("rollout tick failed")

    async def tick(self) -> None:
        """Apply the fleet's states, publish this instance's evidence, and (holding the lease) decide."""
        if not self._specs:
            return
        for key in list(self._specs):
            self._apply_fleet(key)
        await self._publish()
        if not await self._fleet.hold_lease(LEASE, TICK_S * 6):
            return
        now = self._clock()
        for key, (spec, route) in list(self._specs.items()):
            state = self.states[key]
            if state.version == 0:  # nobody wrote it yet (or it ended): the first step starts now, for every instance
                ended = self._fleet.document(document_name(key)) or {}
                expected = int(ended.get("version", 0)) if ended.get("ended") else 0
                await self._write(
                    key, RolloutState(*key, since=round(now, 3), step_id=1, reason="started"), expected, "analysis"
                )
                continue
            cohort = route
            verdict = judge(spec, state, self._fleet_evidence(key), self._blocked(key[1], cohort), now)
            if verdict is not None:
                await self._transition(key, verdict, "analysis")

    async def act(self, route: str, action: str) -> RolloutState:
        """An operator's ``pause``, ``resume``, ``abort`` or ``promote`` of the rollout on ``route``."""
        key = next((k for k in self._specs if k[0] == route), None)
        if key is None:
            raise InvalidRequest(f"route '{route}' has no rollout", param="route")
        if action not in ACTIONS:
            raise InvalidRequest(f"'action' must be one of {', '.join(ACTIONS)}", param="action")
        allowed = {
            "pause": ("progressing",),
            "resume": ("paused", "rolled_back"),
            "abort": ("progressing", "paused", "promoted"),
            "promote": ("progressing", "paused", "rolled_back"),
        }[action]
        for _ in range(3):  # judged again on the newer state when another instance changed it meanwhile
            state = self.states[key]
            if state.state not in allowed:
                raise RolloutConflict(f"cannot {action} a rollout that is {state.state}")
            if action == "resume" and state.state == "rolled_back":
                verdict = Verdict("progressing", 0, "resumed by an operator: back to the first step")
            else:
                to = {"pause": "paused", "resume": "progressing", "abort": "rolled_back", "promote": "promoted"}
                verdict = Verdict(to[action], state.step, f"{action} by an operator")
            won = await self._transition(key, verdict, "operator")
            if won is None:
                raise StateUnavailable("the fleet state store is unreachable; the rollout is unchanged, try again")
            if won:
                return self.states[key]
        raise RolloutConflict("the rollout kept changing while this action was applied; try again")

    async def _transition(self, key: Key, verdict: Verdict, by: str) -> bool | None:
        """Write the transition over the version it was judged on: True when it won, False when another one was
        written first (now adopted), None when the store could not be reached."""
        state = self.states[key]
        evidence = self._fleet_evidence(key).summary()
        evidence["gate_tripped"] = self._blocked(key[1], key[0])
        new = RolloutState(
            *key,
            state=verdict.to,
            step=verdict.step,
            step_id=state.step_id + 1,  # evidence starts afresh after every transition
            since=round(self._clock(), 3),  # exact through JSON in Redis (14 digits)
            reason=verdict.reason,
            evidence=evidence,
        )
        return await self._write(key, new, state.version, by, previous=state)

    async def _write(
        self, key: Key, new: RolloutState, expected: int | None, by: str, previous: RolloutState | None = None
    ) -> bool | None:
        stored = await self._fleet.put_document(document_name(key), new.as_json(), expected)
        if stored is None:
            return None
        if stored.get("ended"):
            return False  # an ended rollout's document won over a stale state: the next tick starts afresh
        adopted = RolloutState.from_json(stored)
        won = (adopted.step_id, adopted.state, adopted.since, adopted.reason) == (
            new.step_id,
            new.state,
            new.since,
            new.reason,
        )
        self._adopt(key, adopted)
        if won and previous is not None:
            self._announce(key, previous, adopted, by)
        return won

    def _apply_fleet(self, key: Key) -> None:
        doc = self._fleet.document(document_name(key))
        if doc is None or doc.get("ended"):
            return
        try:
            shared = RolloutState.from_json(doc)
        except (KeyError, TypeError, ValueError):
            return
        if shared.version != self.states[key].version:
            self._adopt(key, shared)

    def _adopt(self, key: Key, shared: RolloutState) -> None:
        spec = self._specs[key][0]
        shared.step = min(shared.step, len(spec.steps) - 1)
        self.states[key] = shared
        if self._evidence[key].step_id != shared.step_id:
            self._evidence[key] = StepEvidence(shared.step_id)
        self._show(key)

    def _show(self, key: Key) -> None:
        state, spec = self.states[key], self._specs[key][0]
        weight = state.weight(spec)
        self._weights[key[0]] = (key[1], weight)
        self._metrics.rollout_weight.labels(*key).set(weight)
        for name in STATES:
            self._metrics.rollout_state.labels(*key, name).set(1 if name == state.state else 0)
            self._metrics.rollout_transitions.labels(*key, name)  # at 0 until the first: increase() sees it

    def _announce(self, key: Key, before: RolloutState, after: RolloutState, by: str) -> None:
        spec = self._specs[key][0]
        event: dict[str, Any] = {"event": "rollout_transition", "route": key[0], "candidate": key[1]}
        event.update({"from": before.state, "to": after.state, "step": after.step, "weight": after.weight(spec)})
        event.update({"by": by, "reason": after.reason, "evidence": after.evidence})
        log.warning("%s", json.dumps(event))
        self._metrics.rollout_transitions.labels(*key, after.state).inc()
        attributes = {
            "gateway.route": key[0],
            "gateway.rollout.candidate": key[1],
            "gateway.rollout.from": before.state,
            "gateway.rollout.to": after.state,
            "gateway.rollout.weight": after.weight(spec),
            "gateway.rollout.by": by,
            "gateway.rollout.reason": after.reason,
            "gateway.rollout.evidence": json.dumps(after.evidence),
        }
        self._tracing.event_span("rollout_transition", attributes)

    def _end(self, key: Key) -> None:
        """The policy no longer has this rollout: its state goes (a rollout added again starts afresh)."""
        state = self.states.pop(key)
        self._evidence.pop(key, None)
        self._published.pop(key, None)
        if self._weights.get(key[0], ("", 0.0))[0] == key[1]:
            del self._weights[key[0]]
        self._metrics.rollout_weight.remove(*key)
        for name in STATES:
            self._metrics.rollout_state.remove(*key, name)
            self._metrics.rollout_transitions.remove(*key, name)
        event = {"event": "rollout_ended", "route": key[0], "candidate": key[1], "state": state.state}
        log.warning("%s", json.dumps(event))
        if state.version:
            ended = {**state.as_json(), "ended": True}
            self._ending = asyncio.get_running_loop().create_task(self._fleet.put_document(document_name(key), ended))

    def _fleet_evidence(self, key: Key) -> StepEvidence:
        """This step's evidence from every instance (this one's as it is now)."""
        mine = self._evidence[key]
        total = StepEvidence(mine.step_id)
        total.merge(mine)
        own = self._evidence_name(key, self._fleet.instance)
        for name, doc in self._fleet.documents(self._evidence_name(key, "")).items():
            if name != own and int(doc.get("step_id", -1)) == mine.step_id:
                total.merge(StepEvidence.from_json(doc))
        return total

    def _evidence_name(self, key: Key, instance: str) -> str:
        return "rollout-evidence:" + json.dumps(list(key), separators=(",", ":")) + ":" + instance

    async def _publish(self) -> None:
        for key, evidence in list(self._evidence.items()):
            figures = (evidence.step_id, evidence.attempts, evidence.answers + evidence.incumbent_answers)
            if self._published.get(key) == figures or self._fleet.backend == "memory":
                continue
            if await self._fleet.put_document(self._evidence_name(key, self._fleet.instance), evidence.as_json()):
                self._published[key] = figures

    def snapshot(self) -> list[dict[str, Any]]:
        """``GET /admin/rollouts``."""
        now = self._clock()
        out = []
        for key, state in self.states.items():
            spec = self._specs[key][0]
            out.append(
                {
                    "route": key[0],
                    "candidate": key[1],
                    "state": state.state,
                    "step": state.step,
                    "steps": spec.steps,
                    "weight": state.weight(spec),
                    "since_s": round(max(0.0, now - state.since), 3),
                    "reason": state.reason,
                    "evidence": {
                        **self._fleet_evidence(key).summary(),
                        "gate_tripped": self._blocked(key[1], key[0]),
                    },
                    "decided_on": state.evidence,
                }
            )
        return out
