"""EvalGates: take a model off one cohort while its eval fail rate is too high, and put it back when it recovers.

    ok ──(some listed evaluator: fail rate > max_fail_rate over ≥ min_samples outcomes)──▶ tripped
    tripped ──(the evaluator that tripped it, and every other listed evaluator with enough new evidence:
               fail rate < reset_fail_rate over ≥ min_samples outcomes since the trip)──▶ ok

Both directions judge only the outcomes since the last transition, so the failures that tripped a gate cannot trip
it again right after it reset. A tripped gate in ``enforce`` mode makes the planner skip the model for that cohort
only (fallback reason ``eval``); in ``observe`` mode it is only reported. Tripped models keep receiving shadow
copies (``probe_sample``) so their windows keep filling and they can recover. A gate tripped by hand stays tripped
until reset by hand. State is keyed by (model, cohort), so it survives a policy reload while both still exist.

With fleet state (:mod:`gateway.fleet`), ``on_change`` hands every decision to the sync, which writes it to the
fleet if nobody changed the gate since the ``version`` this instance decided on (else the fleet's state wins), and
:meth:`adopt` applies the fleet's state here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.evals.windows import EvalWindows
from gateway.policy.schema import EvalsSpec, GateSpec

log = logging.getLogger("gateway.evals")


@dataclass
class GateState:
    model: str
    cohort: str
    tripped: bool = False
    manual: bool = False
    since: float = 0.0
    reason: str = ""
    baseline: dict[str, int] = field(default_factory=dict)  # outcomes each window had seen at the last transition
    tripped_by: str = ""  # the evaluator whose fail rate tripped it; it must recover before the gate resets
    transitions: int = 0
    version: int = 0  # the fleet's version of this state that the local one derives from (0: never shared)


@dataclass(frozen=True)
class Transition:
    model: str
    cohort: str
    tripped: bool
    reason: str
    mode: str
    via: str = "local"  # "fleet": another instance decided it (or an operator, through another instance)


class EvalGates:
    def __init__(
        self,
        spec: EvalsSpec,
        windows: EvalWindows,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[Transition], None] = lambda t: None,
        on_change: Callable[[GateState, bool], None] | None = None,
    ) -> None:
        self.spec = spec
        self.on_change = on_change  # (state, by_hand): a decision to share with the fleet
        self._windows = windows
        self._clock = clock
        self._on_transition = on_transition
        self._states: dict[tuple[str, str], GateState] = {}

    def reconfigure(self, spec: EvalsSpec) -> None:
        """A reloaded policy: keep the state of (model, cohort) pairs some gate still covers."""
        self.spec = spec
        for key in [k for k in self._states if spec.gate_for(*k) is None]:
            del self._states[key]

    def state(self, model: str, cohort: str) -> GateState:
        key = (model, cohort)
        if key not in self._states:
            self._states[key] = GateState(model, cohort)
        return self._states[key]

    def blocks(self, model: str, cohort: str) -> bool:
        """Whether the planner must skip ``model`` for ``cohort`` (tripped and enforcing)."""
        state = self._states.get((model, cohort))
        if state is None or not state.tripped:
            return False
        gate = self.spec.gate_for(model, cohort)
        return gate is not None and gate.mode == "enforce"

    def tripped(self, model: str, cohort: str) -> bool:
        """Whether the gate of (model, cohort) is tripped, in either mode (a rollout treats both as a failure)."""
        state = self._states.get((model, cohort))
        return state is not None and state.tripped

    def tripped_for(self, cohort: str) -> list[tuple[str, GateSpec]]:
        """Tripped models on ``cohort`` with their gate: they get probe traffic."""
        out = []
        for (model, c), state in self._states.items():
            gate = self.spec.gate_for(model, c)
            if c == cohort and state.tripped and gate is not None:
                out.append((model, gate))
        return out

    def observe(self, model: str, cohort: str) -> None:
        """Re-evaluate the gate of (model, cohort) after new outcomes arrived."""
        gate = self.spec.gate_for(model, cohort)
        if gate is None:
            return
        state = self.state(model, cohort)
        min_samples = gate.min_samples or self.spec.window.min_samples
        if not state.tripped:
            for evaluator in gate.evaluators:
                window = self._windows.get((model, cohort, evaluator))
                new = 0 if window is None else window.seen - state.baseline.get(evaluator, 0)
                if window is None or window.count(last=new) < min_samples:
                    continue
                rate = window.fail_rate(last=new)
                if rate > gate.max_fail_rate:
                    n = window.count(last=new)
                    reason = f"{evaluator} fail rate {rate:.3f} > {gate.max_fail_rate} over {n} outcomes"
                    state.tripped_by = evaluator
                    self._set(state, gate, tripped=True, reason=reason)
                    return
            return
        if state.manual:
            return
        reset = gate.reset_fail_rate if gate.reset_fail_rate is not None else gate.max_fail_rate / 2
        judged = {}
        for evaluator in gate.evaluators:
            window = self._windows.get((model, cohort, evaluator))
            new = 0 if window is None else window.seen - state.baseline.get(evaluator, 0)
            if window is not None and new >= min_samples:
                judged[evaluator] = window.fail_rate(last=new)
        if state.tripped_by not in judged or any(rate >= reset for rate in judged.values()):
            return  # the evaluator that tripped it lacks new evidence, or something still fails too often
        rates = ", ".join(f"{e} {r:.3f}" for e, r in judged.items())
        self._set(state, gate, tripped=False, reason=f"recovered below {reset}: {rates}")

    def trip(self, model: str, cohort: str, reason: str = "tripped by hand") -> GateState:
        state = self.state(model, cohort)
        state.manual = True
        gate = self.spec.gate_for(model, cohort)
        self._set(state, gate, tripped=True, reason=reason, by_hand=True)
        return state

    def reset(self, model: str, cohort: str, reason: str = "reset by hand") -> GateState:
        state = self.state(model, cohort)
        state.manual = False
        self._set(state, self.spec.gate_for(model, cohort), tripped=False, reason=reason, by_hand=True)
        return state

    def states(self) -> list[GateState]:
        return list(self._states.values())

    def adopt(self, shared: GateState) -> None:
        """Make the fleet's state of a gate this instance's (a transition when its verdict differs)."""
        gate = self.spec.gate_for(shared.model, shared.cohort)
        if gate is None:
            return
        state = self.state(shared.model, shared.cohort)
        changed = state.tripped != shared.tripped
        state.tripped, state.manual, state.reason = shared.tripped, shared.manual, shared.reason
        state.baseline, state.tripped_by, state.version = dict(shared.baseline), shared.tripped_by, shared.version
        state.transitions = max(state.transitions, shared.transitions)
        if changed:
            state.since = self._clock()
            self._announce(state, gate, "fleet")

    def _set(
        self, state: GateState, gate: GateSpec | None, *, tripped: bool, reason: str, by_hand: bool = False
    ) -> None:
        changed = state.tripped != tripped
        state.tripped, state.reason, state.since = tripped, reason, self._clock()
        state.baseline = {
            e: w.seen
            for e in (gate.evaluators if gate else ())
            if (w := self._windows.get((state.model, state.cohort, e))) is not None
        }
        if changed:
            state.transitions += 1
        if self.on_change is not None:
            self.on_change(state, by_hand)
        if changed:
            self._announce(state, gate, "local")

    def _announce(self, state: GateState, gate: GateSpec | None, via: str) -> None:
        mode = gate.mode if gate else "enforce"
        event = {"event": "eval_gate_" + ("tripped" if state.tripped else "reset"), "model": state.model}
        event.update(cohort=state.cohort, mode=mode, reason=state.reason, via=via)
        log.warning("%s", json.dumps(event))
        self._on_transition(Transition(state.model, state.cohort, state.tripped, state.reason, mode, via))

    def snapshot(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        listed: set[tuple[str, str]] = set()
        for gate in self.spec.gates:
            for model in gate.models:
                for cohort in gate.cohorts:
                    if (model, cohort) in listed:
                        continue  # an earlier gate governs this pair
                    listed.add((model, cohort))
                    state = self._states.get((model, cohort)) or GateState(model, cohort)
                    out.append(
                        {
                            "model": model,
                            "cohort": cohort,
                            "mode": gate.mode,
                            "tripped": state.tripped,
                            "manual": state.manual,
                            "reason": state.reason,
                            "transitions": state.transitions,
                            "evaluators": gate.evaluators,
                            "max_fail_rate": gate.max_fail_rate,
                        }
                    )
        return out
