"""The proposed policy: earned cohorts move to the candidate, held ones get a mirror, everything else is kept."""

from __future__ import annotations

from typing import Any

import yaml

from gateway.policy import parse_policy
from gateway.policy.schema import PromotionSpec
from gateway.promote.decide import CohortDecision, Comparison
from gateway.promote.propose import chain, propose

POLICY = """
version: 1
revision: r1
models:
  base:   {kind: base, backends: ["http://127.0.0.1:1"]}
  src-a:  {kind: source, backends: ["http://127.0.0.1:2"]}
  src-b:  {kind: source, backends: ["http://127.0.0.1:3"]}
  old:    {kind: merged, sources: [src-a, src-b], backends: ["http://127.0.0.1:4"]}
  cand:   {kind: merged, sources: [src-a, src-b], backends: ["http://127.0.0.1:5"]}
cohorts:
  - {name: tools, match: {has_tools: true}}
  - {name: billing, match: {content: refund}}
  - {name: canary, match: {user: beta}}
  - {name: faq, match: {content: faq}}
  - {name: policy, match: {content: policy}}
  - {name: chat, default: true}
routes:
  tools:   {split: {src-a: 3, cand: 1, base: 1}, sticky: user, fallback: [src-b]}
  billing: {target: old, fallback: sources, balance: prefix, mirror: {to: [cand, base], sample: 0.2}}
  canary:  {split: {cand: 1, base: 9}}
  policy:  {target: src-b, mirror: {to: [base], sample: 0.5}}
  chat:    {target: base, fallback: [src-a], max_tokens: 500}
evals:
  gates:
    - {models: [cand], cohorts: [billing], evaluators: [json_valid], max_fail_rate: 0.1}
"""
SPEC = parse_policy(POLICY).spec


def decision(cohort: str, earned: bool, *, asked: bool = True, required: tuple[str, ...] = ()) -> CohortDecision:
    comparisons = [Comparison(name, True, 30, "src-a", 0.0, -0.01, 0.01, True) for name in required]
    return CohortDecision(cohort, asked, 30, None, {}, comparisons, [] if earned else ["held"])


def proposed(decisions: list[CohortDecision]) -> tuple[dict[str, Any], list[str]]:
    result = propose(yaml.safe_load(POLICY), SPEC, "cand", decisions, PromotionSpec(shadow_sample=0.05))
    return yaml.safe_load(result.text), result.changes


def test_an_earned_split_becomes_a_target_with_the_old_arms_first_in_the_fallback() -> None:
    routes = proposed([decision("tools", True, required=("tool_selection", "task_completion"))])[0]["routes"]
    assert routes["tools"] == {"target": "cand", "fallback": ["src-a", "base", "src-b"]}


def test_sources_is_written_out_with_its_old_meaning_and_other_settings_kept() -> None:
    policy, changes = proposed([decision("billing", True)])
    assert policy["routes"]["billing"] == {
        "target": "cand",
        "fallback": ["old", "src-a", "src-b"],
        "balance": "prefix",
        "mirror": {"to": ["base"], "sample": 0.2},
    }
    assert "evals" in policy and len(policy["evals"]["gates"]) == 1  # billing already has a gate for cand
    assert changes == ["billing: routed to cand, fallback ['old', 'src-a', 'src-b']"]


def test_a_cohort_without_a_route_gets_one_from_the_default_route() -> None:
    policy, _ = proposed([decision("faq", True, required=("json_valid",))])
    assert policy["routes"]["faq"] == {"target": "cand", "fallback": ["base", "src-a"], "max_tokens": 500}
    assert policy["routes"]["chat"] == {"target": "base", "fallback": ["src-a"], "max_tokens": 500}
    gate = policy["evals"]["gates"][-1]
    assert gate == {
        "models": ["cand"],
        "cohorts": ["faq"],
        "evaluators": ["non_empty", "json_valid"],
        "max_fail_rate": 0.05,
    }


def test_held_cohorts_get_a_mirror_unless_the_candidate_already_serves_them() -> None:
    policy, changes = proposed(
        [decision("policy", False), decision("faq", False), decision("canary", False), decision("chat", False)]
    )
    routes = policy["routes"]
    assert routes["policy"]["mirror"] == {"to": ["base", "cand"], "sample": 0.5}
    assert routes["faq"] == {
        "target": "base",
        "fallback": ["src-a"],
        "max_tokens": 500,
        "mirror": {"to": ["cand"], "sample": 0.05},
    }
    assert routes["chat"]["mirror"] == {"to": ["cand"], "sample": 0.05}
    assert routes["canary"] == {"split": {"cand": 1, "base": 9}}
    assert "canary: held, but its route already sends it to cand; left as is" in changes
    assert len(policy["evals"]["gates"]) == 1


def test_cohorts_not_asked_for_and_the_rest_of_the_policy_are_unchanged() -> None:
    policy, changes = proposed([decision("tools", True, asked=False), decision("policy", False, asked=False)])
    assert policy == yaml.safe_load(POLICY) and changes == []


def test_the_text_is_a_valid_policy_with_the_changes_in_a_header() -> None:
    result = propose(
        yaml.safe_load(POLICY), SPEC, "cand", [decision("tools", True), decision("policy", False)], PromotionSpec()
    )
    assert result.text.startswith("# Proposed by `llm-gateway eval` for candidate cand")
    assert "#   policy: held; mirrored to cand (sample 0.1)\n" in result.text
    spec = parse_policy(result.text).spec
    assert spec.routes["tools"].target == "cand" and spec.revision == "r1"
    assert chain(spec, spec.routes["tools"]) == ["cand", "src-a", "base", "src-b"]
