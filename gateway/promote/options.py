"""The ``llm-gateway eval`` command line, and how its flags override the policy's ``evals.promotion`` settings.

Kept free of heavy imports: the CLI builds every subcommand's parser at start-up.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

from pydantic import ValidationError

from gateway.policy.schema import PromotionSpec, RolloutSpec

FLAG_SETTINGS = {
    "require": "evaluators",
    "tolerance": "tolerance",
    "confidence": "confidence",
    "min_cases": "min_cases",
    "max_p95_ttft_s": "max_p95_ttft_s",
    "max_p95_total_s": "max_p95_total_s",
    "max_latency_ratio": "max_latency_ratio",
    "max_tokens_ratio": "max_tokens_ratio",
    "groundedness_min": "groundedness_min",
    "statistics": "statistics",
    "multiplicity": "multiplicity",
}
"""Flag destination → the ``PromotionSpec`` key it overrides."""


class UsageError(Exception):
    """A bad invocation or input (exit code 2)."""


def names(text: str) -> list[str]:
    """``a,b , c`` → ``["a", "b", "c"]``; empty entries are an error."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of names")
    return parts


def percents(text: str) -> list[int]:
    """``5,25,50,100`` → ``[5, 25, 50, 100]``: a rollout's steps, whole percents in 1..100, strictly increasing."""
    try:
        steps = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of whole percents") from None
    if not all(1 <= step <= 100 for step in steps) or any(b <= a for a, b in itertools.pairwise(steps)):
        raise argparse.ArgumentTypeError(f"'{text}': steps must be strictly increasing percents within 1..100")
    return steps


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, help="routing policy YAML (its backends are called directly)")
    parser.add_argument("--dataset", required=True, help="JSONL eval cases (docs/promotion.md)")
    parser.add_argument("--candidate", required=True, help="the registry model to evaluate, e.g. merged-v1")
    parser.add_argument(
        "--baselines", type=names, help="models to beat (default: the candidate's sources and every base model)"
    )
    parser.add_argument("--cohorts", type=names, help="cohorts the candidate asks for (default: all in the dataset)")
    parser.add_argument(
        "--max-cases", type=int, metavar="N", help="a deterministic sample of N cases (by a hash of their ids)"
    )
    parser.add_argument("--out", help="output folder (default: reports/CANDIDATE/)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    parser.add_argument("--repeats", type=int, default=1, help="times each case is sent to each model (default 1)")
    parser.add_argument("--retries", type=int, default=2, help="retries of a transport failure (default 2)")
    parser.add_argument("--judge", metavar="MODEL", help="a policy model grading groundedness and helpfulness")
    parser.add_argument("--push", metavar="URL", help="POST the results to this gateway's /admin/evals")
    parser.add_argument("--sim-profile", metavar="PATH", help="simulator profile for sim:// backends")
    proposal = parser.add_argument_group("the proposed policy")
    proposal.add_argument(
        "--as-rollout",
        action="store_true",
        help="earned cohorts keep their target and get a 'rollout' of the candidate, instead of a switch",
    )
    proposal.add_argument(
        "--rollout-steps", type=percents, metavar="P1,P2,...", help="the rollout's steps in %% (default 5,25,50,100)"
    )
    proposal.add_argument(
        "--rollout-step-s", type=float, metavar="S", help="seconds at each step at least (default 600)"
    )
    thresholds = parser.add_argument_group("thresholds (override the policy's evals.promotion)")
    thresholds.add_argument("--require", type=names, metavar="EVALUATORS", help="required evaluators")
    thresholds.add_argument("--tolerance", type=float, help="allowed shortfall vs the best baseline (0..1)")
    thresholds.add_argument("--confidence", type=float, help="confidence level of the intervals (default 0.95)")
    thresholds.add_argument("--min-cases", type=int, help="fewer cases never earn a cohort (default 20)")
    thresholds.add_argument("--max-p95-ttft-s", type=float)
    thresholds.add_argument("--max-p95-total-s", type=float)
    thresholds.add_argument("--max-latency-ratio", type=float, help="p95 total vs the incumbent's")
    thresholds.add_argument("--max-tokens-ratio", type=float, help="mean output tokens vs the incumbent's")
    thresholds.add_argument("--groundedness-min", type=float, help="groundedness_overlap pass share (default 0.5)")
    thresholds.add_argument(
        "--statistics",
        choices=["paired", "independent"],
        help="paired (default): compare case by case where both models answered; independent: as two samples",
    )
    thresholds.add_argument(
        "--multiplicity",
        choices=["holm", "none"],
        help="holm (default): control the error over every required comparison of the run; none: per comparison",
    )


def effective_settings(configured: PromotionSpec | None, args: argparse.Namespace) -> PromotionSpec:
    """The policy's promotion settings with the given flags on top; raises :class:`UsageError` when out of range."""
    data: dict[str, Any] = configured.model_dump(exclude_unset=True) if configured is not None else {}
    for flag, key in FLAG_SETTINGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            data[key] = value
    try:
        return PromotionSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        )
        raise UsageError(f"invalid promotion settings: {problems}") from None


def rollout_block(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``rollout`` block (without ``candidate``) that ``--as-rollout`` writes on earned routes; None without it.

    The steps, the step time, ``min_samples`` and ``on_failure`` are written out, so the proposal says what it does.
    """
    steps, step_s = args.rollout_steps, args.rollout_step_s
    if not args.as_rollout:
        if steps is not None or step_s is not None:
            raise UsageError("--rollout-steps and --rollout-step-s need --as-rollout")
        return None
    defaults = RolloutSpec(candidate="-")
    data = {"candidate": "-", "steps": steps or defaults.steps, "step_s": defaults.step_s if step_s is None else step_s}
    try:
        spec = RolloutSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors(include_url=False))
        raise UsageError(f"--rollout-step-s: {problems}") from None
    return {
        "steps": spec.steps,
        "step_s": int(spec.step_s) if spec.step_s.is_integer() else spec.step_s,
        "min_samples": spec.min_samples,
        "on_failure": spec.on_failure,
    }
