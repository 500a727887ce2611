"""Per-cohort verdicts from synthetic outcomes: intervals, tolerance, min_cases, required evaluators, bounds."""

from __future__ import annotations

import io
from collections.abc import Sequence

import pytest

from gateway.evals.answer import FinishedAnswer
from gateway.evals.evaluators import Verdict
from gateway.policy import parse_policy
from gateway.policy.schema import PolicySpec, PromotionSpec
from gateway.promote.caller import Reply
from gateway.promote.dataset import Case, Expect
from gateway.promote.decide import decide_cohort, incumbent
from gateway.promote.options import UsageError, effective_settings
from gateway.promote.progress import ProgressBar
from gateway.promote.runner import Trial
from gateway.promote.scoring import Scored
from gateway.promote.stats import difference_interval, percentile, wilson

SPEC: PolicySpec = parse_policy(
    """
version: 1
models:
  base: {kind: base, backends: ["http://127.0.0.1:1"]}
  src:  {kind: source, backends: ["http://127.0.0.1:2"]}
  cand: {kind: merged, sources: [src], backends: ["http://127.0.0.1:3"]}
cohorts:
  - {name: a, match: {has_tools: true}}
  - {name: b, match: {user: x}}
  - {name: rest, default: true}
routes:
  a: {split: {cand: 1, src: 3, base: 2}}
  b: {target: cand}
  rest: {target: base}
"""
).spec


def trials(
    model: str, passes: Sequence[bool], *, evaluator: str = "json_valid", ttft: float = 0.01, tokens: int = 10
) -> list[Trial]:
    out = []
    for i, passed in enumerate(passes):
        case = Case(f"c{i}", i + 1, "rest", {"messages": []}, (), Expect())
        answer = FinishedAnswer({}, "x", (), "stop", None, ttft, ttft * 2, tokens)
        verdict: Verdict = "pass" if passed else "fail"
        out.append(Trial(case, model, 0, Reply(answer, None, 1, 3), {evaluator: Scored(verdict, "")}))
    return out


def decide(all_trials: list[Trial], settings: PromotionSpec, cohort: str = "rest") -> tuple[bool, list[str]]:
    decision = decide_cohort(
        cohort, all_trials, candidate="cand", baselines=["src", "base"], settings=settings, spec=SPEC, asked=True
    )
    return decision.earned, decision.reasons


def test_wilson_and_newcombe_match_published_values() -> None:
    rate = wilson(81, 263, 0.95)  # Newcombe 1998 / Wilson 1927 worked examples
    assert (round(rate.low, 4), round(rate.high, 4)) == (0.2553, 0.3662)
    assert wilson(0, 20, 0.95).low == 0.0 and wilson(20, 20, 0.95).high == 1.0
    low, high = difference_interval(wilson(56, 70, 0.95), wilson(48, 80, 0.95))
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    assert wilson(0, 0, 0.95).n == 0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5 and percentile([], 95) is None


def test_a_tie_earns_only_with_enough_cases() -> None:
    settings = PromotionSpec(tolerance=0.05, min_cases=20)
    few = [*trials("cand", [True] * 40), *trials("src", [True] * 40), *trials("base", [True] * 40)]
    earned, reasons = decide(few, settings)
    assert not earned and reasons[0].startswith("json_valid: 100.0% vs src 100.0%, difference +0.0% (95% CI -8.8%")
    many = [*trials("cand", [True] * 100), *trials("src", [True] * 100), *trials("base", [True] * 100)]
    assert decide(many, settings) == (True, [])
    assert decide(few, PromotionSpec(tolerance=0.1)) == (True, [])


def test_the_best_baseline_sets_the_bar() -> None:
    cand = trials("cand", [True] * 90 + [False] * 10)
    weak, strong = trials("src", [True] * 50 + [False] * 50), trials("base", [True] * 100)
    earned, reasons = decide([*cand, *weak, *strong], PromotionSpec(tolerance=0.05))
    assert not earned and reasons[0].startswith("json_valid: 90.0% vs base 100.0%")
    assert decide([*cand, *weak, *trials("base", [True] * 60 + [False] * 40)], PromotionSpec()) == (True, [])


def test_min_cases_and_required_evaluators() -> None:
    small = [*trials("cand", [True] * 10), *trials("src", [True] * 10), *trials("base", [True] * 10)]
    assert decide(small, PromotionSpec(min_cases=20)) == (False, ["only 10 cases (min_cases 20)"])
    assert decide(small, PromotionSpec(min_cases=5, tolerance=0.5)) == (True, [])
    other = PromotionSpec(min_cases=5, evaluators=["tool_call_valid"])
    assert decide(small, other) == (False, ["none of the required evaluators applies to this cohort's cases"])
    thin = [*small, *trials("cand", [True] * 3, evaluator="task_completion")]
    thin += trials("src", [True] * 3, evaluator="task_completion") + trials(
        "base", [True] * 3, evaluator="task_completion"
    )
    required = PromotionSpec(min_cases=5, tolerance=0.5, evaluators=["json_valid", "task_completion"])
    assert decide(thin, required) == (False, ["task_completion applies to only 3 cases (min_cases 5)"])
    assert decide(thin, PromotionSpec(min_cases=5, tolerance=0.5)) == (True, [])  # default: thin ones not required


def test_latency_and_token_bounds_against_the_incumbent() -> None:
    base = [*trials("src", [True] * 100, ttft=0.01, tokens=10), *trials("base", [True] * 100, ttft=0.02, tokens=20)]
    slow = trials("cand", [True] * 100, ttft=0.05, tokens=10)
    assert decide([*slow, *base], PromotionSpec(max_p95_ttft_s=0.04)) == (
        False,
        ["p95 TTFT 0.050s over the 0.04s bound"],
    )
    # the incumbent of "rest" is base (total p95 0.04s): 0.1s is 2.5x of it
    assert decide([*slow, *base], PromotionSpec(max_latency_ratio=2)) == (
        False,
        ["p95 total 0.1 is over 2x base's 0.04"],
    )
    assert decide([*slow, *base], PromotionSpec(max_latency_ratio=3)) == (True, [])
    wordy = trials("cand", [True] * 100, tokens=50)
    assert decide([*wordy, *base], PromotionSpec(max_tokens_ratio=2)) == (
        False,
        ["mean output tokens 50 is over 2x base's 20"],
    )
    # "b" is routed to the candidate already: the reference is the best baseline (src, 10 tokens)
    assert decide([*trials("cand", [True] * 100, tokens=15), *base], PromotionSpec(max_tokens_ratio=1.2), "b") == (
        False,
        ["mean output tokens 15 is over 1.2x src's 10"],
    )


def test_incumbent_is_the_route_target_or_heaviest_other_split_arm() -> None:
    assert incumbent(SPEC, "a", "cand") == "src"
    assert incumbent(SPEC, "a", "src") == "base"
    assert incumbent(SPEC, "b", "cand") is None
    assert incumbent(SPEC, "rest", "cand") == "base"


def test_flags_override_the_policy_settings() -> None:
    import argparse

    configured = PromotionSpec(tolerance=0.1, min_cases=30)
    args = argparse.Namespace(tolerance=None, min_cases=5, require=["json_valid"])
    settings = effective_settings(configured, args)
    assert (settings.tolerance, settings.min_cases, settings.evaluators) == (0.1, 5, ["json_valid"])
    with pytest.raises(UsageError, match="confidence"):
        effective_settings(None, argparse.Namespace(confidence=1.5))
    with pytest.raises(UsageError, match="evaluators"):
        effective_settings(None, argparse.Namespace(require=["json_vaild"]))


def test_progress_bar_draws_on_a_terminal_only() -> None:
    shown, hidden = io.StringIO(), io.StringIO()
    ticks = iter(range(100))
    bar = ProgressBar(4, stream=shown, enabled=True, interval_s=0, clock=lambda: float(next(ticks)), width=4)
    for failed in (False, True, False, False):
        bar.advance(failed=failed)
    bar.close()
    assert "\reval [##..] 2/4 requests, 1 failed" in shown.getvalue()
    assert shown.getvalue().endswith("4/4 requests, 1 failed 5.0s\n")
    quiet = ProgressBar(4, stream=hidden)  # a StringIO is not a TTY
    quiet.advance()
    quiet.close()
    assert hidden.getvalue() == ""
