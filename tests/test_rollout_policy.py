"""A route's ``rollout`` in policy files: ``llm-gateway check`` names each mistake at its own line, and ``llm-gateway
eval --as-rollout`` proposes a rollout (a policy that passes the same check) instead of switching the target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.policy import parse_policy
from gateway.policy.schema import PromotionSpec
from gateway.promote.decide import CohortDecision, Comparison
from gateway.promote.propose import propose

ROOT = Path(__file__).resolve().parent.parent
POLICY = """version: 1
models:
  incumbent: {kind: source, backends: ["http://127.0.0.1:1"]}
  merged-v1: {kind: merged, sources: [incumbent], backends: ["http://127.0.0.1:2"]}
cohorts:
  - {name: billing, match: {header: {x-topic: billing}}}
  - {name: chat, default: true}
routes:
  billing:
    target: incumbent
    rollout:
      candidate: merged-v1
      steps: [5, 25, 50, 100]
      sticky: user
      on_failure: rollback
  chat: {target: incumbent}
"""
MISTAKES = {
    "unknown_candidate": (
        [("candidate: merged-v1", "candidate: merged-v2")],
        ["12:18: routes.billing.rollout.candidate: unknown model 'merged-v2' (did you mean 'merged-v1'?)"],
    ),
    "candidate_is_target": (
        [("candidate: merged-v1", "candidate: incumbent")],
        ["12:18: routes.billing.rollout.candidate: the candidate 'incumbent' is already the route's target"],
    ),
    "repeated_step": (
        [("[5, 25, 50, 100]", "[5, 25, 25, 100]")],
        ["13:22: routes.billing.rollout.steps[2]: steps must be strictly increasing: 25 comes after 25"],
    ),
    "decreasing_step": (
        [("[5, 25, 50, 100]", "[5, 50, 25]")],
        ["13:22: routes.billing.rollout.steps[2]: steps must be strictly increasing: 25 comes after 50"],
    ),
    "step_below_1": (
        [("[5, 25, 50, 100]", "[0, 50]")],
        ["13:15: routes.billing.rollout.steps[0]: Input should be greater than or equal to 1"],
    ),
    "step_above_100": (
        [("[5, 25, 50, 100]", "[5, 150]")],
        ["13:18: routes.billing.rollout.steps[1]: Input should be less than or equal to 100"],
    ),
    "no_steps": (
        [("[5, 25, 50, 100]", "[]")],
        ["13:7: routes.billing.rollout.steps: List should have at least 1 item after validation, not 0"],
    ),
    "misspelled_sticky": (
        [("sticky: user", "sticky: users")],
        [
            "14:15: routes.billing.rollout.sticky: 'users' is not a rollout key: user, api_key, request or "
            "header:NAME (did you mean 'user'?)"
        ],
    ),
    "sticky_header_without_a_name": (
        [("sticky: user", "sticky: 'header:'")],
        ["14:15: routes.billing.rollout.sticky: 'header:' is not a rollout key: user, api_key, request or header:NAME"],
    ),
    "rollout_on_a_split": (
        [("    target: incumbent", "    split: {incumbent: 1}")],
        [
            "11:5: routes.billing.rollout: a 'rollout' needs the route's 'target' (the incumbent it moves traffic "
            "from), not a 'split'"
        ],
    ),
    "bad_on_failure": (
        [("on_failure: rollback", "on_failure: retry")],
        ["15:19: routes.billing.rollout.on_failure: Input should be 'rollback' or 'pause'"],
    ),
    "unknown_key": (
        [("on_failure: rollback", "on_fail: rollback")],
        ["15:7: routes.billing.rollout.on_fail: unknown key"],
    ),
    "three_mistakes_together": (
        [
            ("candidate: merged-v1", "candidate: merged-v2"),
            ("[5, 25, 50, 100]", "[5, 50, 25]"),
            ("sticky: user", "sticky: users"),
        ],
        [
            "12:18: routes.billing.rollout.candidate: unknown model 'merged-v2'",
            "13:22: routes.billing.rollout.steps[2]: steps must be strictly increasing: 25 comes after 50",
            "14:15: routes.billing.rollout.sticky: 'users' is not a rollout key",
        ],
    ),
}


def check(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Every broken file checked by one ``llm-gateway check`` (one process start for all of them)."""
    folder = tmp_path_factory.mktemp("rollout-check")
    for name, (edits, _) in MISTAKES.items():
        text = POLICY
        for old, new in edits:
            assert old in text
            text = text.replace(old, new, 1)
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return folder, check(*(folder / f"{name}.yaml" for name in MISTAKES))


def test_the_rollout_policy_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(POLICY, encoding="utf-8")
    result = check(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok")


@pytest.mark.parametrize("name", MISTAKES)
def test_check_names_the_rollout_mistake_at_its_line(
    name: str, checked: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    folder, result = checked
    assert result.returncode == 1
    path = folder / f"{name}.yaml"
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{path}:")]
    expected = MISTAKES[name][1]
    assert len(lines) == len(expected), result.stderr
    for line, message in zip(lines, expected, strict=True):
        assert line.startswith(f"{path}:{message}"), (line, message)


SHARED = """
version: 1
models:
  base:   {kind: base, backends: ["http://127.0.0.1:1"]}
  src-a:  {kind: source, backends: ["http://127.0.0.1:2"]}
  src-b:  {kind: source, backends: ["http://127.0.0.1:3"]}
  old:    {kind: merged, sources: [src-a, src-b], backends: ["http://127.0.0.1:4"]}
  cand:   {kind: merged, sources: [src-a, src-b], backends: ["http://127.0.0.1:5"]}
cohorts:
  - {name: tools, match: {has_tools: true}}
  - {name: billing, match: {content: refund}}
  - {name: faq, match: {content: faq}}
  - {name: policy, match: {content: policy}}
  - {name: canary, match: {user: beta}}
  - {name: chat, default: true}
routes:
  tools:   {split: {src-a: 3, cand: 1, base: 1}, sticky: user, fallback: [src-b]}
  billing: {target: old, fallback: sources, balance: prefix, mirror: {to: [cand], sample: 0.2}}
  policy:  {target: src-b, fallback: [cand, base], rollout: {candidate: old, steps: [10, 100]}}
  canary:  {target: base, rollout: {candidate: cand, steps: [1, 100]}}
  chat:    {target: base, fallback: [src-a], max_tokens: 500}
"""
SPEC = parse_policy(SHARED).spec
BLOCK = {"steps": [5, 25, 50, 100], "step_s": 600, "min_samples": 200, "on_failure": "rollback"}


def decision(cohort: str, earned: bool, *, required: tuple[str, ...] = ()) -> CohortDecision:
    comparisons = [Comparison(name, True, 30, "src-a", 0.0, -0.01, 0.01, True) for name in required]
    return CohortDecision(cohort, True, 30, None, {}, comparisons, [] if earned else ["held"])


def proposed(decisions: list[CohortDecision], rollout: dict[str, Any] | None = BLOCK) -> tuple[dict[str, Any], str]:
    result = propose(yaml.safe_load(SHARED), SPEC, "cand", decisions, PromotionSpec(), rollout=rollout)
    parse_policy(result.text)  # what `llm-gateway check` runs
    return yaml.safe_load(result.text), result.text


def test_an_earned_target_route_keeps_its_target_and_fallback_and_gets_a_rollout() -> None:
    policy, text = proposed([decision("billing", True, required=("json_valid",))])
    assert policy["routes"]["billing"] == {
        "target": "old",
        "fallback": "sources",
        "balance": "prefix",
        "mirror": {"to": ["cand"], "sample": 0.2},  # shadow copies count as the rollout's evidence
        "rollout": {"candidate": "cand", **BLOCK},
    }
    assert "#   billing: rollout of cand over old (steps 5%, 25%, 50%, 100%, step_s 600)\n" in text
    gate = policy["evals"]["gates"][-1]
    assert gate["models"] == ["cand"] and gate["cohorts"] == ["billing"] and "json_valid" in gate["evaluators"]


def test_an_earned_split_keeps_its_heaviest_other_arm_as_the_incumbent() -> None:
    policy, text = proposed([decision("tools", True)])
    assert policy["routes"]["tools"] == {
        "target": "src-a",
        "fallback": ["base", "src-b"],
        "rollout": {"candidate": "cand", **BLOCK},
    }
    assert "the split {'src-a': 3.0, 'cand': 1.0, 'base': 1.0} becomes target src-a" in text


def test_a_cohort_on_the_default_route_gets_a_route_of_its_own_with_the_rollout() -> None:
    policy, _ = proposed([decision("faq", True)], rollout={**BLOCK, "steps": [10, 100], "step_s": 60})
    assert policy["routes"]["faq"] == {
        "target": "base",
        "fallback": ["src-a"],
        "max_tokens": 500,
        "rollout": {"candidate": "cand", **BLOCK, "steps": [10, 100], "step_s": 60},
    }
    assert policy["routes"]["chat"] == {"target": "base", "fallback": ["src-a"], "max_tokens": 500}


def test_an_earned_route_with_another_rollout_gets_this_one_and_drops_the_candidate_from_its_fallback() -> None:
    policy, text = proposed([decision("policy", True)])
    assert policy["routes"]["policy"] == {
        "target": "src-b",
        "fallback": ["base"],
        "rollout": {"candidate": "cand", **BLOCK},
    }
    assert "; replaces the rollout of old" in text


def test_a_route_already_rolling_out_the_candidate_is_left_as_is_earned_or_held() -> None:
    for earned in (True, False):
        policy, text = proposed([decision("canary", earned)])
        assert policy["routes"]["canary"] == {"target": "base", "rollout": {"candidate": "cand", "steps": [1, 100]}}
        assert "canary: " in text and "left as is" in text


def test_a_switch_without_as_rollout_removes_the_routes_rollout_of_the_candidate() -> None:
    policy, text = proposed([decision("canary", True)], rollout=None)
    assert policy["routes"]["canary"] == {"target": "cand", "fallback": ["base"]}
    assert "its rollout of cand is removed" in text


EVAL_POLICY = """version: 1
models:
  base:      {kind: base, backends: ["sim://base"]}
  source-a:  {kind: source, backends: ["sim://src"]}
  merged-v1: {kind: merged, sources: [source-a], backends: ["sim://merged"]}
cohorts:
  - {name: structured, match: {response_format: [json_object, json_schema]}}
  - {name: chat, default: true}
routes:
  structured: {target: source-a, fallback: [base]}
  chat:       {target: base}
evals:
  promotion: {tolerance: 0.15}
"""
SIM_PROFILE = {"default": {"output_tokens": 8}, "models": {m: {"invalid_json_rate": 0.5} for m in ("base", "source-a")}}


def eval_inputs(folder: Path) -> list[str]:
    policy = folder / "policy.yaml"
    policy.write_text(EVAL_POLICY, encoding="utf-8")
    dataset = folder / "data.jsonl"
    case = {"cohort": "structured", "prompt": "the order as JSON", "response_format": {"type": "json_object"}}
    dataset.write_text("".join(json.dumps({**case, "id": f"s{i}"}) + "\n" for i in range(30)), encoding="utf-8")
    profile = folder / "sim.json"
    profile.write_text(json.dumps(SIM_PROFILE), encoding="utf-8")
    argv = ["eval", "--policy", str(policy), "--dataset", str(dataset), "--candidate", "merged-v1"]
    return [*argv, "--sim-profile", str(profile), "--out", str(folder / "out")]


def test_eval_as_rollout_writes_a_rollout_that_passes_check(tmp_path: Path) -> None:
    argv = eval_inputs(tmp_path)
    assert main([*argv, "--as-rollout", "--rollout-steps", "10,50,100", "--rollout-step-s", "120"]) == 0
    path = tmp_path / "out" / "policy.proposed.yaml"
    routes = yaml.safe_load(path.read_text())["routes"]
    rollout = {"candidate": "merged-v1", "steps": [10, 50, 100], "step_s": 120, "min_samples": 200}
    assert routes["structured"] == {
        "target": "source-a",
        "fallback": ["base"],
        "rollout": {**rollout, "on_failure": "rollback"},
    }
    assert routes["chat"] == {"target": "base"}
    result = check(path)
    assert result.returncode == 0, result.stderr


def test_eval_rollout_flags_are_checked_before_any_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = eval_inputs(tmp_path)
    assert main([*argv, "--rollout-step-s", "60"]) == 2
    assert "--rollout-steps and --rollout-step-s need --as-rollout" in capsys.readouterr().err
    assert main([*argv, "--as-rollout", "--rollout-step-s", "0"]) == 2
    assert "--rollout-step-s: Input should be greater than 0" in capsys.readouterr().err
    for steps in ("5,50,25", "0,100", "5,x"):
        with pytest.raises(SystemExit) as exited:
            main([*argv, "--as-rollout", "--rollout-steps", steps])
        assert exited.value.code == 2
        assert f"'{steps}'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
