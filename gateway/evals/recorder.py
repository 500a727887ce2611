"""EvalRecorder: every eval outcome enters here, whatever its source, and flows to windows, gates and metrics.

Sources: ``online`` (evaluators on primary answers), ``shadow`` (the same evaluators on mirrored answers),
``pushed`` (``POST /admin/evals`` from an offline eval job) and ``feedback`` (``POST /v1/feedback``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from functools import lru_cache

from gateway.evals.answer import FinishedAnswer
from gateway.evals.evaluators import ALWAYS_ON, DEFAULT_REFUSAL_PATTERNS, EVALUATORS, EvalSettings, Outcome
from gateway.evals.feedback import AnsweredRequest, FeedbackCache
from gateway.evals.gates import EvalGates, Transition
from gateway.evals.windows import EvalWindows
from gateway.policy.schema import EvalsSpec
from gateway.telemetry.metrics import GatewayMetrics

FEEDBACK = "user_feedback"


class EvalRecorder:
    def __init__(
        self,
        spec: EvalsSpec,
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[Transition], None] = lambda t: None,
    ) -> None:
        self.spec = spec
        self.metrics = metrics
        self.windows = EvalWindows(spec.window.size, spec.window.max_age_s, clock)
        self.gates = EvalGates(spec, self.windows, clock, self._transition)
        self.feedback = FeedbackCache(spec.feedback_cache_size, spec.feedback_ttl_s, clock)
        self._on_transition = on_transition
        self._evaluators: dict[str, tuple[str, ...]] = {}

    def reconfigure(self, spec: EvalsSpec, models: set[str], cohorts: set[str]) -> None:
        self.spec = spec
        self.windows.resize(spec.window.size, spec.window.max_age_s)
        self.windows.drop_unknown(models, cohorts)
        self.gates.reconfigure(spec)
        self.feedback.capacity, self.feedback.ttl_s = spec.feedback_cache_size, spec.feedback_ttl_s
        self._evaluators.clear()
        _settings.cache_clear()

    def evaluators_for(self, cohort: str) -> tuple[str, ...]:
        """Always-on evaluators, the cohort's own, and those its gates watch (feedback is not run online)."""
        cached = self._evaluators.get(cohort)
        if cached is not None:
            return cached
        names = list(ALWAYS_ON)
        extra = self.spec.cohorts[cohort].evaluators if cohort in self.spec.cohorts else []
        gated = [e for g in self.spec.gates if cohort in g.cohorts for e in g.evaluators]
        for name in [*extra, *gated]:
            if name not in names and name in EVALUATORS:
                names.append(name)
        found = self._evaluators[cohort] = tuple(names)
        return found

    def settings_for(self, cohort: str) -> EvalSettings:
        spec = self.spec.cohorts.get(cohort)
        if spec is None:
            return EvalSettings()
        patterns = tuple(spec.refusal_patterns) if spec.refusal_patterns is not None else None
        return _settings(patterns, spec.ttft_slo_s, spec.total_slo_s)

    def evaluate(self, model: str, cohort: str, answer: FinishedAnswer, source: str) -> dict[str, Outcome]:
        settings = self.settings_for(cohort)
        outcomes = {name: EVALUATORS[name].evaluate(answer, settings) for name in self.evaluators_for(cohort)}
        for name, outcome in outcomes.items():
            if outcome.verdict != "n/a":
                self._record(model, cohort, name, outcome.verdict == "fail", source)
        self.gates.observe(model, cohort)
        return outcomes

    def push(self, model: str, cohort: str, evaluator: str, passed: int, failed: int, source: str = "pushed") -> None:
        """Add a batch of outcomes, interleaved evenly so the window's recent end is not all one kind."""
        total = passed + failed
        fails_added = 0
        for i in range(total):
            due = round((i + 1) * failed / total) if total else 0
            failed_now = due > fails_added
            fails_added += failed_now
            self._record(model, cohort, evaluator, failed_now, source)
        self.gates.observe(model, cohort)

    def feedback_score(self, answered: AnsweredRequest, score: float) -> None:
        """Count a score of an answer claimed through :meth:`FleetState.claim_feedback` (once per request id)."""
        self._record(answered.model, answered.cohort, FEEDBACK, score < 0, "feedback")
        self.gates.observe(answered.model, answered.cohort)

    def _record(self, model: str, cohort: str, evaluator: str, failed: bool, source: str) -> None:
        window = self.windows.record((model, cohort, evaluator), failed)
        verdict = "fail" if failed else "pass"
        self.metrics.eval_outcomes.labels(model, cohort, evaluator, verdict, source).inc()
        self.metrics.eval_fail_rate.labels(model, cohort, evaluator).set(window.fail_rate())

    def _transition(self, transition: Transition) -> None:
        self.metrics.eval_gate_tripped.labels(transition.model, transition.cohort).set(1 if transition.tripped else 0)
        self._on_transition(transition)

    def snapshot(self) -> dict[str, object]:
        windows = [
            {
                "model": model,
                "cohort": cohort,
                "evaluator": evaluator,
                "outcomes": window.count(),
                "fail_rate": round(window.fail_rate(), 4),
                "seen": window.seen,
            }
            for (model, cohort, evaluator), window in self.windows.items()
        ]
        return {"windows": windows, "gates": self.gates.snapshot(), "feedback_ids": len(self.feedback)}


@lru_cache(maxsize=256)
def _settings(patterns: tuple[str, ...] | None, ttft: float | None, total: float | None) -> EvalSettings:
    compiled = tuple(re.compile(p) for p in patterns) if patterns is not None else DEFAULT_REFUSAL_PATTERNS
    return EvalSettings(refusal_patterns=compiled, ttft_slo_s=ttft, total_slo_s=total)
