"""The rollout state machine's decisions, from a state, a policy and a step's evidence (no clock, no servers)."""

from __future__ import annotations

from gateway.policy.schema import RolloutSpec
from gateway.rollouts.analysis import RolloutState, judge
from gateway.rollouts.evidence import StepEvidence

SPEC = RolloutSpec(candidate="merged-v1", steps=[5, 25, 100], step_s=60, min_samples=100, max_error_rate=0.05)


def evidence(answers: int, failed: int = 0, candidate_s: float = 0.1, incumbent_s: float = 0.1) -> StepEvidence:
    found = StepEvidence(step_id=1)
    for i in range(answers + failed):
        found.add_attempt(i < failed)
    for _ in range(answers):
        found.add_answer(True, candidate_s)
        found.add_answer(False, incumbent_s)
    return found


def test_a_step_advances_only_once_it_lasted_step_s_with_min_samples_answers() -> None:
    state = RolloutState("billing", "merged-v1", since=1000.0)
    assert judge(SPEC, state, evidence(100), False, 1059.0) is None  # too early
    assert judge(SPEC, state, evidence(99), False, 2000.0) is None  # too few answers
    verdict = judge(SPEC, state, evidence(100), False, 1060.0)
    assert verdict is not None and (verdict.to, verdict.step) == ("progressing", 1)
    last = RolloutState("billing", "merged-v1", step=2, since=1000.0)
    verdict = judge(SPEC, last, evidence(100), False, 1060.0)
    assert verdict is not None and verdict.to == "promoted"


def test_failures_roll_back_as_soon_as_the_step_cannot_pass() -> None:
    state = RolloutState("billing", "merged-v1", since=1000.0)
    assert judge(SPEC, state, evidence(10, failed=5), False, 1001.0) is None  # 5 of at most 5 allowed over 100
    verdict = judge(SPEC, state, evidence(10, failed=6), False, 1001.0)
    assert verdict is not None and verdict.to == "rolled_back" and "error rate 6/16" in verdict.reason
    paused = judge(SPEC.model_copy(update={"on_failure": "pause"}), state, evidence(10, failed=6), False, 1001.0)
    assert paused is not None and paused.to == "paused"
    gated = judge(SPEC, state, evidence(0), True, 1001.0)
    assert gated is not None and gated.to == "rolled_back" and "eval gate" in gated.reason


def test_latency_is_compared_with_the_incumbents_at_the_same_step() -> None:
    state = RolloutState("billing", "merged-v1", since=1000.0)
    slow = judge(SPEC, state, evidence(100, candidate_s=0.4, incumbent_s=0.2), False, 1001.0)
    assert slow is not None and slow.to == "rolled_back" and "x the incumbent" in slow.reason
    assert judge(SPEC, state, evidence(100, candidate_s=0.28, incumbent_s=0.2), False, 1001.0) is None
    assert judge(SPEC, state, evidence(99, candidate_s=0.4, incumbent_s=0.2), False, 1001.0) is None  # too few


def test_evidence_from_several_instances_adds_up_exactly() -> None:
    a, b = evidence(30, failed=1, candidate_s=0.1), evidence(20, candidate_s=1.0)
    merged = StepEvidence(1)
    merged.merge(StepEvidence.from_json(a.as_json()))
    merged.merge(StepEvidence.from_json(b.as_json()))
    assert (merged.attempts, merged.failed, merged.answers, merged.incumbent_answers) == (51, 1, 50, 50)
    p95 = merged.p95(True)
    assert p95 is not None and 0.9 < p95 <= 1.1  # the slow instance's answers are 40 % of the step's
    assert merged.p95(False) is not None and merged.p95(False) <= 0.11


def test_a_state_not_progressing_is_never_moved_by_evidence() -> None:
    for name in ("paused", "rolled_back", "promoted"):
        assert judge(SPEC, RolloutState("b", "m", state=name, since=0.0), evidence(1000, failed=500), True, 1e9) is None
