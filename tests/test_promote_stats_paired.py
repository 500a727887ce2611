"""Paired non-inferiority: Newcombe's paired interval, p-values, Holm over a run's cohorts, and cases needed."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import pytest

from gateway.evals.answer import FinishedAnswer
from gateway.evals.evaluators import Verdict
from gateway.policy import parse_policy
from gateway.policy.schema import PolicySpec, PromotionSpec
from gateway.promote.caller import Reply
from gateway.promote.dataset import Case, Expect
from gateway.promote.decide import CohortDecision, Comparison, decide_cohort, decide_cohorts
from gateway.promote.noninferiority import holds_at, p_value, units_needed, z_one_sided
from gateway.promote.options import add_eval_arguments, effective_settings
from gateway.promote.report import RunInfo, report_json, report_markdown
from gateway.promote.runner import Trial
from gateway.promote.scoring import AGREEMENT, Scored
from gateway.promote.stats import Independent, Paired, z_for

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
  a: {target: src}
  b: {target: src}
  rest: {target: base}
"""
).spec
BASELINES = ["src", "base"]


def trials(model: str, passes: Sequence[bool], cohort: str = "rest", evaluator: str = "json_valid") -> list[Trial]:
    """One trial per case ``c0, c1, ...``: the same ids for every model, so the models' answers pair up by case."""
    out = []
    for i, passed in enumerate(passes):
        case = Case(f"{cohort}-c{i}", i + 1, cohort, {"messages": []}, (), Expect())
        answer = FinishedAnswer({}, "x", (), "stop", None, 0.01, 0.02, 10)
        verdict: Verdict = "pass" if passed else "fail"
        out.append(Trial(case, model, 0, Reply(answer, None, 1, 3), {evaluator: Scored(verdict, "")}))
    return out


def shared_failures(n: int, failing: int) -> list[Trial]:
    """Candidate and src fail the same ``failing`` hard cases (the last ones) and pass the rest; base is weaker."""
    same = [True] * (n - failing) + [False] * failing
    return [*trials("cand", same), *trials("src", same), *trials("base", [i % 2 == 0 for i in range(n)])]


def decide(all_trials: list[Trial], settings: PromotionSpec) -> CohortDecision:
    return decide_cohort(
        "rest", all_trials, candidate="cand", baselines=BASELINES, settings=settings, spec=SPEC, asked=True
    )


def required(decision: CohortDecision) -> Comparison:
    [comparison] = [c for c in decision.comparisons if c.required]
    return comparison


def shown(c: Comparison) -> str:
    return f"{c.method}: {c.delta_low:+.4f}..{c.delta_high:+.4f}, p={c.p_value}, threshold {c.threshold}"


def test_paired_interval_matches_newcombe_published_values() -> None:
    # Newcombe (1998), "Improved confidence intervals for the difference between binomial proportions based on
    # paired data", Stat Med 17:2635, Table II, method 10, examples (a)-(d); the same four values are the reference
    # of the R package propint's test "ci.two.dep.props produces the results reported in Newcombe1998".
    # (a, b, c, d) = (both pass, only the first, only the second, neither).
    published = {
        (36, 12, 2, 0): (0.0569, 0.3404),
        (18, 12, 2, 18): (0.0562, 0.3290),
        (53, 0, 0, 1): (-0.0729, 0.0729),
        (0, 30, 0, 0): (0.8395, 1.0),
    }
    z = z_for(0.95)
    for counts, (low, high) in published.items():
        got = Paired(*counts).interval(z)
        assert (round(got[0], 4), round(got[1], 4)) == (low, high), counts
    # (b) and (c) need the paper's n/2 reduction of a positive ad - bc in phi (plain phi gives 0.0618 and -0.0640)
    assert Paired(18, 12, 2, 18).phi == pytest.approx((18 * 18 - 12 * 2 - 50 / 2) / (30 * 20 * 20 * 30) ** 0.5)
    assert Paired(53, 0, 0, 1).estimate == 0 and Paired(30, 0, 0, 0).phi == 0.0  # an empty margin: phi 0


def test_p_value_is_where_the_lower_bound_meets_the_tolerance() -> None:
    evidence = Paired(80, 6, 4, 10)
    p = p_value(evidence, 0.05)
    assert 0 < p < 0.5
    assert evidence.interval(z_one_sided(p))[0] == pytest.approx(-0.05, abs=1e-9)
    assert holds_at(evidence, 0.05, p * 1.01) and not holds_at(evidence, 0.05, p * 0.99)
    worse = Paired(80, 0, 10, 10)  # -10 %: below -tolerance, so p is above one half
    assert 0.5 < p_value(worse, 0.05) < 1 and worse.interval(z_one_sided(1 - p_value(worse, 0.05)))[1] == (
        pytest.approx(-0.05, abs=1e-9)
    )


def test_paired_earns_shared_hard_cases_with_fewer_cases_than_independent() -> None:
    data = shared_failures(60, 15)  # 75 % for both, failing the same 15 cases
    paired = decide(data, PromotionSpec(tolerance=0.05))
    independent = decide(data, PromotionSpec(tolerance=0.05, statistics="independent"))
    p, i = required(paired), required(independent)
    both = f"paired {shown(p)}; independent {shown(i)}"
    assert paired.earned and not independent.earned, both
    assert (p.method, p.pairs, p.only_candidate, p.only_baseline, p.best_baseline) == ("paired", 60, 0, 0, "src")
    assert p.delta_low is not None and p.delta_low > -0.05, both
    assert i.method == "independent" and i.delta_low is not None and i.delta_low < -0.15, both
    # at these rates the independent analysis would need almost ten times the cases the paired one needs
    assert i.cases_needed == 575 and independent.cases_needed == 575, both
    assert required(decide(shared_failures(40, 10), PromotionSpec(tolerance=0.05))).cases_needed == 53
    assert "(95% CI -" in independent.reasons[0] and "paired" not in independent.reasons[0]


def test_a_really_worse_candidate_is_still_held_by_the_paired_analysis() -> None:
    baseline = [True] * 95 + [False] * 5
    candidate = [i >= 8 for i in range(95)] + [False] * 5  # fails 8 cases the baseline passes
    decision = decide(
        [*trials("cand", candidate), *trials("src", baseline), *trials("base", baseline)], PromotionSpec()
    )
    c = required(decision)
    assert not decision.earned
    assert (c.pairs, c.only_candidate, c.only_baseline, c.delta) == (100, 0, 8, -0.08)
    assert decision.reasons[0].startswith("json_valid: 87.0% vs src 95.0%, difference -8.0% (95% CI -")
    assert "paired over 100 pairs: b=0, c=8" in decision.reasons[0]
    assert c.p_value is not None and c.p_value > 0.5 and c.cases_needed is None
    assert (decision.cases_needed, decision.needed) == (None, "not at these rates: json_valid is -8.0%, below -5.0%")


def _run(multiplicity: Literal["holm", "none"]) -> list[CohortDecision]:
    """Three cohorts: a (the candidate far better), b (a tie on 90 cases) and rest (a tie on 95 cases)."""
    groups = [
        ("a", [*trials("cand", [True] * 60, "a"), *trials("src", [i % 3 > 0 for i in range(60)], "a")]),
        ("b", [*trials("cand", [True] * 90, "b"), *trials("src", [True] * 90, "b")]),
        ("rest", _tie(95)),
    ]
    settings = PromotionSpec(tolerance=0.05, multiplicity=multiplicity)
    return decide_cohorts(
        [(name, group, True) for name, group in groups],
        candidate="cand",
        baselines=["src"],
        settings=settings,
        spec=SPEC,
    )


def test_holm_holds_borderline_comparisons_that_pass_one_at_a_time() -> None:
    a, b, rest = _run("none")
    assert a.earned and b.earned and rest.earned, [c.reasons for c in (a, b, rest)]
    p_b, p_rest = required(b).p_value, required(rest).p_value
    assert p_b is not None and p_rest is not None and 0.0125 < p_rest < p_b < 0.025  # each under alpha = 0.025
    a, b, rest = _run("holm")
    assert a.earned and not b.earned and not rest.earned
    assert [required(d).threshold for d in (a, rest, b)] == pytest.approx([0.025 / 3, 0.025 / 2, 0.025])  # ranks 1-3
    assert rest.reasons[0].endswith("p=0.0127 is above its Holm threshold 0.0125 (2 of 3)"), rest.reasons
    assert b.reasons[0].endswith("p=0.0148 meets its Holm threshold 0.025, but Holm stopped at rest/json_valid")
    assert required(b).blocked_by == "rest/json_valid" and required(b).cases_needed is None
    settings = PromotionSpec(tolerance=0.05)
    alone = decide_cohort(
        "rest", _tie(95), candidate="cand", baselines=["src"], settings=settings, spec=SPEC, asked=True
    )
    assert alone.earned  # on its own, rest is a family of one


def _tie(n: int) -> list[Trial]:
    return [*trials("cand", [True] * n), *trials("src", [True] * n)]


def test_cases_needed_is_the_fewest_that_earn_at_the_adjusted_level() -> None:
    rest = _run("holm")[2]
    c = required(rest)
    assert c.cases_needed is not None and c.threshold == pytest.approx(0.0125) and rest.cases_needed == c.cases_needed
    n = c.cases_needed
    assert holds_at(Paired(n, 0, 0, 0), 0.05, c.threshold) and not holds_at(Paired(n - 1, 0, 0, 0), 0.05, c.threshold)
    assert rest.needed == f"{n} cases for json_valid at these rates (now 95)"
    # shared failures (75 %): 53 pairs; checked on the counts scaled to 53 and 52, and on whole datasets around it
    evidence = Paired(30, 0, 0, 10)
    assert units_needed(evidence, 0.05, 0.025) == 53
    assert holds_at(evidence.scaled(53), 0.05, 0.025) and not holds_at(evidence.scaled(52), 0.05, 0.025)
    assert decide(shared_failures(56, 14), PromotionSpec()).earned
    assert not decide(shared_failures(52, 13), PromotionSpec()).earned
    independent = Independent(30, 40, 30, 40)
    assert units_needed(independent, 0.05, 0.025) == 575
    assert holds_at(independent.scaled(575), 0.05, 0.025) and not holds_at(independent.scaled(574), 0.05, 0.025)


def test_reported_only_evaluators_are_never_required_nor_compared() -> None:
    data = shared_failures(100, 0)
    data += trials("cand", [False] * 100, evaluator=AGREEMENT) + trials("src", [True] * 100, evaluator=AGREEMENT)
    decision = decide(data, PromotionSpec())
    assert decision.earned, decision.reasons
    agreement = next(c for c in decision.comparisons if c.evaluator == AGREEMENT)
    assert (agreement.required, agreement.best_baseline, agreement.p_value) == (False, None, None)
    assert decision.models["cand"].rates[AGREEMENT].passed == 0  # still reported


def test_flags_choose_the_statistics_and_the_multiplicity() -> None:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    base = ["--policy", "p", "--dataset", "d", "--candidate", "c"]
    settings = effective_settings(PromotionSpec(), parser.parse_args([*base]))
    assert (settings.statistics, settings.multiplicity) == ("paired", "holm")
    chosen = parser.parse_args([*base, "--statistics", "independent", "--multiplicity", "none"])
    assert (effective_settings(None, chosen).statistics, effective_settings(None, chosen).multiplicity) == (
        "independent",
        "none",
    )
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--statistics", "pairwise"])


def test_the_report_states_the_method_the_family_and_the_cases_needed() -> None:
    decisions = _run("holm")
    info = RunInfo("p.yaml", "d.jsonl", "cand", ["src"], None, 1, PromotionSpec(tolerance=0.05).model_dump())
    report = report_json(info, decisions, [], 1)
    assert report["statistics"] == {"method": "paired", "multiplicity": "holm", "alpha": 0.025, "comparisons": 3}
    rest = report["cohorts"][2]
    [comparison] = rest["comparisons"]
    assert comparison["method"] == "paired" and comparison["pairs"] == 95
    assert comparison["discordant"] == {"candidate_only": 0, "baseline_only": 0}
    assert (comparison["p"], comparison["threshold"], comparison["rank"]) == (0.01267, 0.0125, 2)
    assert rest["cases_needed"] == comparison["cases_needed"] == required(decisions[2]).cases_needed
    markdown = report_markdown(report, decisions)
    assert "Holm over the run's 3 required comparisons" in markdown
    assert "paired over 95 pairs, decided by b=0, c=0 discordant pairs" in markdown
    assert f"Cases needed: {decisions[2].needed}." in markdown


def table(cohort: str, evaluator: str, a: int, b: int, c: int, d: int, prefix: str = "") -> list[Trial]:
    """Candidate and src trials whose pairs count ``a`` both pass, ``b`` only cand, ``c`` only src, ``d`` neither."""
    mine = [True] * (a + b) + [False] * (c + d)
    theirs = [True] * a + [False] * b + [True] * c + [False] * d
    made = [*trials("cand", mine, cohort, evaluator), *trials("src", theirs, cohort, evaluator)]
    return [replace(t, case=replace(t.case, id=prefix + t.case.id)) for t in made]


def test_the_worked_example_of_the_docs() -> None:
    """docs/promotion.md, "A worked example": tool_selection on 200 cases, a=150, b=6, c=8, d=36, in a run of 4."""
    groups = [
        ("a", table("a", "json_valid", 40, 20, 0, 0)),
        ("b", [*table("b", "json_valid", 40, 20, 0, 0, "s"), *table("b", "json_schema", 40, 0, 20, 0, "w")]),
        ("rest", table("rest", "tool_selection", 150, 6, 8, 36)),
    ]
    for multiplicity, earned in (("none", True), ("holm", False)):
        settings = PromotionSpec(tolerance=0.05, multiplicity=multiplicity)
        decisions = decide_cohorts(
            [(n, g, True) for n, g in groups], candidate="cand", baselines=["src"], settings=settings, spec=SPEC
        )
        rest = decisions[2]
        c = required(rest)
        assert (round(c.delta_low or 0, 3), round(c.delta_high or 0, 3), c.only_candidate, c.only_baseline) == (
            -0.049,
            0.029,
            6,
            8,
        )
        assert rest.earned is earned, rest.reasons
    assert rest.reasons == [
        "tool_selection: 78.0% vs src 79.0%, difference -1.0% (95% CI -4.9%..+2.9%, paired over 200 pairs: b=6, c=8); "
        "p=0.023 is above its Holm threshold 0.0125 (3 of 4)"
    ]
    assert (rest.cases_needed, c.cases_needed, c.family) == (250, 250, 4)
    independent = Independent(156, 200, 158, 200)
    assert [round(x, 3) for x in independent.interval(z_for(0.95))] == [-0.090, 0.071]
    assert round(p_value(independent, 0.05), 3) == 0.165 and units_needed(independent, 0.05, 0.025) == 810
