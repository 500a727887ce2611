"""The rollout state machine: what a rollout does next, from its state, its policy and the evidence of its step.

    progressing ──(step_s passed, min_samples answers, error rate and latency within bounds)──▶ next step
    progressing at the last step ──(same)──▶ promoted (100 %, until the policy is edited)
    progressing ──(error rate over max_error_rate, p95 over max_latency_ratio x the incumbent's, or the eval
                   gate of (candidate, cohort) tripped)──▶ rolled_back (0 %, held) or paused (on_failure)
    operator: pause, resume (a rolled-back one starts again at the first step), abort (rolled back), promote

The error rate fails a step as soon as it cannot pass any more: more failures than ``max_error_rate`` allows over
``min_samples`` attempts (or over the attempts so far, when there are more), so a broken candidate goes back after
a handful of failures rather than after ``min_samples`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.policy.schema import RolloutSpec
from gateway.rollouts.evidence import StepEvidence

STATES = ("progressing", "paused", "rolled_back", "promoted")
MIN_INCUMBENT_ANSWERS = 20
"""Latency is compared only when the incumbent answered this many at the step (none at 100 %: not compared)."""


@dataclass
class RolloutState:
    route: str
    candidate: str
    state: str = "progressing"
    step: int = 0  # index into the policy's steps
    step_id: int = 1  # counts steps entered, so evidence of an earlier step (or run) is never mixed in
    since: float = 0.0  # wall time the current step (or state) began
    reason: str = "started"
    evidence: dict[str, Any] = field(default_factory=dict)  # what decided the last transition
    version: int = 0  # the fleet document's version this state was read from

    def weight(self, spec: RolloutSpec) -> float:
        if self.state == "rolled_back":
            return 0.0
        if self.state == "promoted":
            return 100.0
        return float(spec.steps[min(self.step, len(spec.steps) - 1)])

    def as_json(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "candidate": self.candidate,
            "state": self.state,
            "step": self.step,
            "step_id": self.step_id,
            "since": self.since,
            "reason": self.reason,
            "evidence": self.evidence,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RolloutState:
        state = str(doc.get("state", "progressing"))
        evidence = doc.get("evidence")
        return cls(
            route=str(doc["route"]),
            candidate=str(doc["candidate"]),
            state=state if state in STATES else "progressing",
            step=max(0, int(doc.get("step", 0))),
            step_id=int(doc.get("step_id", 1)),
            since=float(doc.get("since", 0.0)),
            reason=str(doc.get("reason", "")),
            evidence=evidence if isinstance(evidence, dict) else {},
            version=int(doc.get("version", 0)),
        )


@dataclass(frozen=True)
class Verdict:
    to: str  # the next state
    step: int
    reason: str


def judge(
    spec: RolloutSpec, state: RolloutState, evidence: StepEvidence, gate_tripped: bool, now: float
) -> Verdict | None:
    """The transition the evidence calls for, or None (stay)."""
    if state.state != "progressing":
        return None
    failure = _failure(spec, evidence, gate_tripped)
    if failure is not None:
        to = "rolled_back" if spec.on_failure == "rollback" else "paused"
        return Verdict(to, state.step, failure)
    if now - state.since < spec.step_s or evidence.answers < spec.min_samples:
        return None
    weight = spec.steps[min(state.step, len(spec.steps) - 1)]
    passed = (
        f"{evidence.answers} answers at {weight}% over {now - state.since:.0f}s, error rate {evidence.error_rate:.3f}"
    )
    if state.step >= len(spec.steps) - 1:
        return Verdict("promoted", state.step, f"last step passed: {passed}")
    return Verdict("progressing", state.step + 1, f"step passed: {passed}")


def _failure(spec: RolloutSpec, evidence: StepEvidence, gate_tripped: bool) -> str | None:
    if gate_tripped:
        return "the candidate's eval gate on this cohort is tripped"
    allowed = spec.max_error_rate * max(evidence.attempts, spec.min_samples)
    if evidence.failed > allowed:
        return (
            f"error rate {evidence.failed}/{evidence.attempts} failed attempts is over max_error_rate "
            f"{spec.max_error_rate} (at most {allowed:.1f} of {max(evidence.attempts, spec.min_samples)})"
        )
    if evidence.answers >= spec.min_samples and evidence.incumbent_answers >= MIN_INCUMBENT_ANSWERS:
        candidate, incumbent = evidence.p95(True), evidence.p95(False)
        if candidate is not None and incumbent and candidate / incumbent > spec.max_latency_ratio:
            return (
                f"p95 latency {candidate * 1000:.0f} ms is {candidate / incumbent:.2f}x the incumbent's "
                f"{incumbent * 1000:.0f} ms (max_latency_ratio {spec.max_latency_ratio})"
            )
    return None
