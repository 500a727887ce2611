"""StepEvidence: what a rollout's analysis judges, gathered per step by every instance and added up.

Counts and latency histograms (fixed buckets, so the instances' evidence adds up exactly): the candidate's
attempts, failed attempts and answers (primary and shadow), and the latency of the answers of the candidate and of
the incumbent at the same step (time to first token for streams, to the whole answer otherwise).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

BUCKETS = tuple(0.002 * 1.1**i for i in range(110))
"""Upper bounds in seconds, 2 ms to about 70 s, 10 % apart: a p95 is known within 10 %."""


def _empty() -> list[int]:
    return [0] * (len(BUCKETS) + 1)


@dataclass
class StepEvidence:
    step_id: int = 0
    attempts: int = 0  # candidate attempts (primary requests, and shadow copies)
    failed: int = 0  # of which failed (an error, a timeout, an unusable answer)
    answers: int = 0  # candidate answers that came back
    candidate_latency: list[int] = field(default_factory=_empty)
    incumbent_latency: list[int] = field(default_factory=_empty)

    def add_attempt(self, failed: bool) -> None:
        self.attempts += 1
        self.failed += failed

    def add_answer(self, on_candidate: bool, latency_s: float) -> None:
        histogram = self.candidate_latency if on_candidate else self.incumbent_latency
        histogram[bisect.bisect_left(BUCKETS, latency_s)] += 1
        self.answers += on_candidate

    def merge(self, other: StepEvidence) -> None:
        self.attempts += other.attempts
        self.failed += other.failed
        self.answers += other.answers
        for mine, theirs in (
            (self.candidate_latency, other.candidate_latency),
            (self.incumbent_latency, other.incumbent_latency),
        ):
            for i, n in enumerate(theirs):
                mine[i] += n

    @property
    def error_rate(self) -> float:
        return self.failed / self.attempts if self.attempts else 0.0

    @property
    def incumbent_answers(self) -> int:
        return sum(self.incumbent_latency)

    def p95(self, on_candidate: bool) -> float | None:
        histogram = self.candidate_latency if on_candidate else self.incumbent_latency
        total = sum(histogram)
        if total == 0:
            return None
        rank = math.ceil(0.95 * total)
        seen = 0
        for i, n in enumerate(histogram):
            seen += n
            if seen >= rank:
                return BUCKETS[min(i, len(BUCKETS) - 1)]
        return BUCKETS[-1]

    def as_json(self) -> dict[str, Any]:
        return {
            "step_id": self.step_id,
            "attempts": self.attempts,
            "failed": self.failed,
            "answers": self.answers,
            "candidate_latency": _sparse(self.candidate_latency),
            "incumbent_latency": _sparse(self.incumbent_latency),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> StepEvidence:
        evidence = cls(int(doc.get("step_id", 0)), int(doc.get("attempts", 0)), int(doc.get("failed", 0)))
        evidence.answers = int(doc.get("answers", 0))
        for histogram, name in (
            (evidence.candidate_latency, "candidate_latency"),
            (evidence.incumbent_latency, "incumbent_latency"),
        ):
            for index, count in (doc.get(name) or {}).items():
                if 0 <= int(index) < len(histogram):
                    histogram[int(index)] = int(count)
        return evidence

    def summary(self) -> dict[str, Any]:
        """The figures a transition is decided on (logged with it, and shown by ``GET /admin/rollouts``)."""
        candidate, incumbent = self.p95(True), self.p95(False)
        ratio = candidate / incumbent if candidate is not None and incumbent else None
        return {
            "attempts": self.attempts,
            "failed": self.failed,
            "error_rate": round(self.error_rate, 4),
            "answers": self.answers,
            "incumbent_answers": self.incumbent_answers,
            "candidate_p95_s": candidate,
            "incumbent_p95_s": incumbent,
            "latency_ratio": round(ratio, 3) if ratio is not None else None,
        }


def _sparse(histogram: list[int]) -> dict[str, int]:
    return {str(i): n for i, n in enumerate(histogram) if n}
