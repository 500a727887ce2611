"""``llm-gateway eval``: the promotion gate, from a policy and a dataset to verdicts, reports and a proposed policy.

``plan`` (check every input, before any request) → ``collect`` (every case against every model) → ``decide`` (per
cohort) → ``write`` (the report files and ``policy.proposed.yaml``) → optional ``push``. Exit codes: 0 when the
candidate earned every cohort it asked for, 1 when it did not (CI blocks the rollout), 2 on a usage or input error
(and when ``--push`` fails).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from gateway.policy import LoadedPolicy, PolicyError, load_policy
from gateway.policy.checks import did_you_mean
from gateway.policy.schema import PolicySpec, PromotionSpec
from gateway.promote.backends import BackendKeyMissing, SimBackends, endpoint_for
from gateway.promote.caller import ChatCaller
from gateway.promote.captured import is_capture, load_capture, sample
from gateway.promote.dataset import Case, DatasetError, load_dataset
from gateway.promote.decide import CohortDecision, decide_cohorts, incumbent
from gateway.promote.options import UsageError, effective_settings, rollout_block
from gateway.promote.progress import ProgressBar
from gateway.promote.propose import propose
from gateway.promote.push import PushFailed, push, push_results
from gateway.promote.report import RunInfo, case_lines, report_json, report_markdown
from gateway.promote.runner import JudgeSetup, Trial, run_trials
from gateway.promote.scoring import REPORTED_ONLY, ScoringSettings
from gateway.sim import SimProfile
from gateway.upstream.client import UpstreamClient

ADMIN_TOKEN_VARIABLE = "GATEWAY_ADMIN_TOKEN"


@dataclass(frozen=True)
class Plan:
    policy: LoadedPolicy
    raw: dict[str, Any]
    settings: PromotionSpec
    cases: list[Case]
    candidate: str
    baselines: list[str]
    cohorts: list[str]  # every cohort decided, in policy order
    asked: list[str]
    judge: str | None
    out: Path
    sim_profile: SimProfile
    concurrency: int
    repeats: int
    retries: int
    push_token: str | None
    rollout: dict[str, Any] | None = None  # --as-rollout: the block earned routes get (without the candidate)


def run_eval(args: argparse.Namespace) -> int:
    try:
        plan = make_plan(args)
        trials = asyncio.run(collect(plan))
    except (UsageError, DatasetError, BackendKeyMissing) as exc:
        print(f"llm-gateway eval: {exc}", file=sys.stderr)
        return 2
    decisions = decide(plan, trials)
    exit_code = 0 if all(d.earned for d in decisions if d.asked) else 1
    write_outputs(plan, args, trials, decisions, exit_code)
    for d in decisions:
        why = "" if d.earned else ": " + "; ".join(d.reasons)
        print(f"{d.cohort}: {'earned' if d.earned else 'held'}{'' if d.asked else ' (not asked)'}{why}")
    print(f"report: {plan.out / 'report.md'}")
    if args.push:
        try:
            push(args.push, plan.push_token or "", push_results(decisions))
        except PushFailed as exc:
            print(f"llm-gateway eval: push failed: {exc}", file=sys.stderr)
            return 2
        print(f"pushed the results to {args.push}")
    return exit_code


def make_plan(args: argparse.Namespace) -> Plan:
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        raise UsageError(f"invalid policy:\n{exc}") from None
    spec = policy.spec
    _known_model(spec.models, args.candidate, "--candidate")
    baselines = args.baselines or _default_baselines(policy, args.candidate)
    for name in baselines:
        _known_model(spec.models, name, "--baselines")
    if args.candidate in baselines or len(set(baselines)) != len(baselines):
        raise UsageError("--baselines must not repeat a model or include the candidate")
    if not baselines:
        raise UsageError(f"{args.candidate} has no sources and the policy no base model: name --baselines")
    if args.judge is not None:
        _known_model(spec.models, args.judge, "--judge")
    for flag in ("concurrency", "repeats"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be at least 1")
    if args.retries < 0:
        raise UsageError("--retries must not be negative")
    token = os.environ.get(ADMIN_TOKEN_VARIABLE) if args.push else None
    if args.push and not token:
        raise UsageError(f"--push needs the gateway's admin token in ${ADMIN_TOKEN_VARIABLE}")
    names = [c.name for c in spec.cohorts]
    for cohort in args.cohorts or ():
        if cohort not in names:
            raise UsageError(f"--cohorts: unknown cohort '{cohort}'{did_you_mean(cohort, names)}")
    settings = _settings(spec.evals.promotion, args)
    rollout = rollout_block(args)
    cases = _load_cases(args, spec)
    present = {case.cohort for case in cases}
    asked = args.cohorts or [n for n in names if n in present]
    return Plan(
        policy=policy,
        raw=yaml.safe_load(Path(args.policy).read_text(encoding="utf-8")),
        settings=settings,
        cases=cases,
        candidate=args.candidate,
        baselines=baselines,
        cohorts=[n for n in names if n in present or n in asked],
        asked=asked,
        judge=args.judge,
        out=Path(args.out) if args.out else Path("reports") / args.candidate,
        sim_profile=_sim_profile(args.sim_profile),
        concurrency=args.concurrency,
        repeats=args.repeats,
        retries=args.retries,
        push_token=token,
        rollout=rollout,
    )


def _settings(configured: PromotionSpec | None, args: argparse.Namespace) -> PromotionSpec:
    """The effective promotion settings; a reported-only evaluator (``agreement``) cannot be required."""
    if reported := [name for name in args.require or [] if name in REPORTED_ONLY]:
        raise UsageError(f"--require: {', '.join(reported)} is reported only and cannot be required")
    return effective_settings(configured, args)


def _load_cases(args: argparse.Namespace, spec: PolicySpec) -> list[Case]:
    """A traffic capture (its skipped lines counted on stderr) or a written dataset; ``--max-cases`` samples."""
    max_cases: int | None = args.max_cases
    if max_cases is not None and max_cases < 1:
        raise UsageError("--max-cases must be at least 1")
    if is_capture(args.dataset):
        load = load_capture(args.dataset, spec, max_cases=max_cases)
        print(f"eval: capture {load.summary(str(args.dataset))}", file=sys.stderr)
        return load.cases
    cases = load_dataset(args.dataset, [cohort.name for cohort in spec.cohorts])
    return cases if max_cases is None else sample(cases, max_cases)


def _references(plan: Plan) -> dict[str, str]:
    """Cohort → the model whose answers ``agreement`` compares the others with: the cohort's incumbent when it is
    evaluated, else the first baseline."""
    references = {}
    for cohort in plan.cohorts:
        current = incumbent(plan.policy.spec, cohort, plan.candidate)
        references[cohort] = current if current in plan.baselines else plan.baselines[0]
    return references


def _known_model(models: dict[str, Any], name: str, flag: str) -> None:
    if name not in models:
        raise UsageError(f"{flag}: unknown model '{name}'{did_you_mean(name, models)}")


def _default_baselines(policy: LoadedPolicy, candidate: str) -> list[str]:
    models = policy.spec.models
    bases = [name for name, model in models.items() if model.kind == "base"]
    return [m for m in dict.fromkeys([*models[candidate].sources, *bases]) if m != candidate]


def _sim_profile(path: str | None) -> SimProfile:
    if path is None:
        return SimProfile()
    try:
        return SimProfile.from_file(path)
    except (OSError, ValueError, yaml.YAMLError, ValidationError) as exc:
        raise UsageError(f"--sim-profile {path}: {exc}") from None


async def collect(plan: Plan) -> list[Trial]:
    spec = plan.policy.spec
    models = [plan.candidate, *plan.baselines]
    sims = SimBackends(plan.sim_profile)
    client = UpstreamClient()
    await client.start()
    try:
        await sims.start(spec, [*models, *([plan.judge] if plan.judge else [])])
        endpoints = {name: endpoint_for(spec, name, sims) for name in models}
        judge = JudgeSetup(endpoint_for(spec, plan.judge, sims), plan.settings.judge_min_score) if plan.judge else None
        caller = ChatCaller(client, spec.health.timeouts, retries=plan.retries)
        progress = ProgressBar(len(plan.cases) * plan.repeats * len(models))
        return await run_trials(
            plan.cases,
            endpoints,
            caller,
            settings=ScoringSettings(groundedness_min=plan.settings.groundedness_min),
            concurrency=plan.concurrency,
            repeats=plan.repeats,
            progress=progress,
            judge_with=judge,
            references=_references(plan) if any(case.captured for case in plan.cases) else None,
        )
    finally:
        await client.close()
        await sims.stop()


def decide(plan: Plan, trials: list[Trial]) -> list[CohortDecision]:
    """Every cohort at once: Holm's correction ranks the required comparisons of all of them together."""
    return decide_cohorts(
        [(cohort, [t for t in trials if t.case.cohort == cohort], cohort in plan.asked) for cohort in plan.cohorts],
        candidate=plan.candidate,
        baselines=plan.baselines,
        settings=plan.settings,
        spec=plan.policy.spec,
    )


def write_outputs(
    plan: Plan, args: argparse.Namespace, trials: list[Trial], decisions: list[CohortDecision], exit_code: int
) -> None:
    plan.out.mkdir(parents=True, exist_ok=True)
    proposal = propose(plan.raw, plan.policy.spec, plan.candidate, decisions, plan.settings, rollout=plan.rollout)
    (plan.out / "policy.proposed.yaml").write_text(proposal.text, encoding="utf-8")
    info = RunInfo(
        policy=str(args.policy),
        dataset=str(args.dataset),
        candidate=plan.candidate,
        baselines=plan.baselines,
        judge=plan.judge,
        repeats=plan.repeats,
        settings=plan.settings.model_dump(),
    )
    report = report_json(info, decisions, proposal.changes, exit_code)
    (plan.out / "report.json").write_bytes(_json_bytes(report))
    (plan.out / "report.md").write_text(report_markdown(report, decisions), encoding="utf-8")
    with (plan.out / "cases.jsonl").open("wb") as handle:
        handle.writelines(case_lines(trials))
    try:
        from gateway.promote.chart import draw_report  # matplotlib is slow to import, and an extra: only here
    except ImportError:
        print("eval: report.png skipped (pip install 'llm-gateway[report]' for the chart)", file=sys.stderr)
        return
    draw_report(decisions, plan.candidate, plan.out / "report.png")


def _json_bytes(report: dict[str, Any]) -> bytes:
    return orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n"
