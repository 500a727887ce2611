"""Run every case against every model (and its repeats) with a bounded pool of workers, then score each answer.

Every model gets the same request bodies; jobs are interleaved case by case so that a backend slowing down part way
through affects all models' share of the dataset alike. Results come back in job order, whatever order they finish in.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from gateway.promote.backends import Endpoint
from gateway.promote.caller import ChatCaller, Reply
from gateway.promote.dataset import Case
from gateway.promote.judge import judge
from gateway.promote.progress import ProgressBar
from gateway.promote.scoring import AGREEMENT, Scored, ScoringSettings, agreement, score


@dataclass(frozen=True)
class Trial:
    """One model's answer to one case (one of its ``repeat``s) and every applicable evaluator's outcome."""

    case: Case
    model: str
    repeat: int
    reply: Reply
    outcomes: Mapping[str, Scored]


@dataclass(frozen=True)
class JudgeSetup:
    endpoint: Endpoint
    min_score: int


async def run_trials(
    cases: Sequence[Case],
    endpoints: Mapping[str, Endpoint],
    caller: ChatCaller,
    *,
    settings: ScoringSettings,
    concurrency: int,
    repeats: int,
    progress: ProgressBar | None = None,
    judge_with: JudgeSetup | None = None,
    references: Mapping[str, str] | None = None,
) -> list[Trial]:
    """Every case against every model, scored; ``references`` (cohort → model) adds ``agreement`` to captured
    cases once every answer is in (see :func:`with_agreement`)."""
    jobs = [(case, repeat, model) for case in cases for repeat in range(repeats) for model in endpoints]
    results: list[Trial | None] = [None] * len(jobs)
    turns = {model: itertools.count() for model in endpoints}  # round-robin over each model's replicas
    queue = iter(enumerate(jobs))

    async def worker() -> None:
        for index, (case, repeat, model) in queue:
            reply = await caller.ask(endpoints[model], case.body, start=next(turns[model]))
            outcomes = score(case, reply.answer, reply.error, settings)
            if judge_with is not None:
                outcomes.update(await judge(caller, judge_with.endpoint, case, reply.answer, judge_with.min_score))
            results[index] = Trial(case, model, repeat, reply, outcomes)
            if progress is not None:
                progress.advance(failed=reply.error is not None)

    workers = [asyncio.create_task(worker()) for _ in range(max(1, min(concurrency, len(jobs))))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        if progress is not None:
            progress.close()
    trials = [trial for trial in results if trial is not None]
    return with_agreement(trials, references) if references else trials


def with_agreement(trials: Sequence[Trial], references: Mapping[str, str]) -> list[Trial]:
    """``trials`` with an ``agreement`` outcome on each captured case's answer, against the cohort's reference
    model's answer to the same case and repeat; the reference's own answers get none (they would agree by
    definition). Applicability is the case's, so every other model is judged on the same cases."""
    replies = {(t.case.id, t.repeat, t.model): t.reply for t in trials}
    out = []
    for trial in trials:
        reference = references.get(trial.case.cohort)
        if trial.case.captured is None or reference is None or trial.model == reference:
            out.append(trial)
            continue
        theirs = replies.get((trial.case.id, trial.repeat, reference))
        scored = agreement(reference, theirs.answer if theirs else None, trial.reply.answer, trial.reply.error)
        out.append(replace(trial, outcomes={**trial.outcomes, AGREEMENT: scored}))
    return out
