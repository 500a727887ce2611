"""CohortClassifier and Planner as pure functions of a request (no servers)."""

from __future__ import annotations

import random
import string
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy import parse_policy
from gateway.routing.cohorts import CohortClassifier
from gateway.routing.features import RequestFeatures
from gateway.routing.planner import Planner, choose_weighted, unit_hash
from tests.policies import ROLLOUT_POLICY, ROLLOUT_SIMS

URLS = {name: f"http://127.0.0.1:{9000 + i}" for i, name in enumerate(ROLLOUT_SIMS)}
POLICY = parse_policy(string.Template(ROLLOUT_POLICY).substitute(URLS)).spec
CLASSIFIER = CohortClassifier(POLICY)


def chat(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "support-assistant", "messages": [{"role": "user", "content": text}], **extra}


def cohort_of(body: dict[str, Any], headers: dict[str, str] | None = None, api_key: str | None = None) -> str:
    return CLASSIFIER.classify(RequestFeatures(body, headers or {}, api_key)).cohort


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (chat(tools=[{"type": "function", "function": {"name": "f"}}]), {}, "tool_required"),
        (chat(tools=[]), {}, "out_of_domain"),
        (chat(), {"x-topic": "billing"}, "billing_refund"),
        (chat(), {"x-topic": "shipping"}, "out_of_domain"),
        (chat("I want a REFUND now"), {}, "billing_refund"),
        (chat("refund"), {"x-topic": "billing"}, "billing_refund"),
        (
            {"model": "m", "messages": [{"role": "system", "content": "refund"}, {"role": "user", "content": "hi"}]},
            {},
            "out_of_domain",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a chargeback"}]}]},
            {},
            "billing_refund",
        ),
        (chat(metadata={"queue": "policy"}), {}, "policy_exception"),
        (chat(metadata={"queue": "sales"}), {}, "out_of_domain"),
        (chat(user="vip-2"), {}, "vip"),
        (chat(user="vip-3"), {}, "out_of_domain"),
        (chat(response_format={"type": "json_object"}), {}, "structured"),
        (chat(response_format={"type": "json_schema", "json_schema": {}}), {}, "structured"),
        (chat(response_format={"type": "text"}), {}, "out_of_domain"),
        (chat("x" * 2000), {}, "long_prompt"),
        (chat("x" * 1999), {}, "out_of_domain"),
        ({"model": "merged-v1", "messages": [{"role": "user", "content": "hi"}]}, {}, "direct_merged"),
        (chat(), {"x-lang": "de"}, "not_english"),
        (chat(metadata={"queue": "other"}), {"x-lang": "fr"}, "not_english"),
        (chat(), {"x-lang": "en"}, "out_of_domain"),
        ({"model": "support-assistant", "prompt": "refund please"}, {}, "billing_refund"),
    ],
)
def test_every_matcher(body: dict[str, Any], headers: dict[str, str], expected: str) -> None:
    assert cohort_of(body, headers) == expected


def test_first_match_wins_and_rule_is_reported() -> None:
    body = chat("refund", tools=[{"type": "function", "function": {"name": "f"}}])
    decision = CLASSIFIER.classify(RequestFeatures(body, {}))
    assert decision.cohort == "tool_required"
    assert decision.rule == "cohorts[0]"
    assert CLASSIFIER.classify(RequestFeatures(chat(), {})).rule == "default"


def test_api_key_matcher() -> None:
    policy = parse_policy(
        """
version: 1
models: {base: {kind: base, backends: [http://127.0.0.1:1]}}
cohorts:
  - {name: partner, match: {api_key: partner-app}}
  - {name: rest, default: true}
routes: {partner: {target: base}, rest: {target: base}}
"""
    ).spec
    classifier = CohortClassifier(policy)
    assert classifier.classify(RequestFeatures(chat(), {}, "partner-app")).cohort == "partner"
    assert classifier.classify(RequestFeatures(chat(), {}, "other")).cohort == "rest"


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


@given(
    body=st.dictionaries(
        st.sampled_from(["model", "messages", "tools", "metadata", "user", "response_format", "prompt"]),
        JSONISH,
    ),
    headers=st.dictionaries(st.sampled_from(["x-topic", "x-lang", "other"]), st.text(max_size=10)),
)
def test_classification_is_total(body: dict[str, Any], headers: dict[str, str]) -> None:
    decision = CLASSIFIER.classify(RequestFeatures(body, headers))
    assert decision.cohort in {c.name for c in POLICY.cohorts}


@given(
    weights=st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=6).filter(lambda w: sum(w) > 0),
    u=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_split_always_picks_an_arm_with_weight(weights: list[float], u: float) -> None:
    arms = [f"arm{i}" for i in range(len(weights))]
    cumulative = [sum(weights[: i + 1]) for i in range(len(weights))]
    chosen = choose_weighted(arms, cumulative, u)
    assert weights[arms.index(chosen)] > 0


def test_split_ratio_follows_weights() -> None:
    planner = Planner(POLICY, random.Random(7).random)
    features = RequestFeatures(chat(tools=[{"type": "function", "function": {"name": "f"}}]), {})
    picks = Counter(planner.plan("tool_required", features, str(i)).primary for i in range(4000))
    share = picks["merged-v1"] / 4000
    assert 0.08 < share < 0.12, picks
    assert set(picks) == {"merged-v1", "billing-specialist"}


def test_sticky_user_keeps_one_arm_and_users_spread() -> None:
    planner = Planner(POLICY, random.Random(1).random)
    tools = [{"type": "function", "function": {"name": "f"}}]
    arms = {}
    for user in (f"user-{i}" for i in range(300)):
        picks = {
            planner.plan("tool_required", RequestFeatures(chat(user=user, tools=tools), {}), "r").primary
            for _ in range(5)
        }
        assert len(picks) == 1
        arms[user] = picks.pop()
    assert 10 < Counter(arms.values())["merged-v1"] < 60


def test_attempt_order_and_fallback_sources() -> None:
    planner = Planner(POLICY)
    plan = planner.plan("billing_refund", RequestFeatures(chat("refund"), {}), "r")
    assert plan.attempts == (
        "merged-v1",
        "billing-specialist",
        "base",
    )
    pinned = planner.plan("direct_merged", RequestFeatures({**chat(), "model": "merged-v1"}, {}), "r")
    assert pinned.pinned
    assert pinned.attempts == ("merged-v1", "billing-specialist", "policy-specialist")


def test_skip_filter_removes_models_and_reports_why() -> None:
    planner = Planner(POLICY)
    plan = planner.plan(
        "billing_refund",
        RequestFeatures(chat("refund"), {}),
        "r",
        skip=lambda model, cohort: "eval" if (model, cohort) == ("merged-v1", "billing_refund") else None,
    )
    assert plan.attempts == ("billing-specialist", "base")
    assert plan.primary_skipped is not None and plan.primary_skipped.reason == "eval"


def test_unit_hash_is_stable_and_uniform() -> None:
    assert unit_hash("abc") == unit_hash("abc")
    values = [unit_hash(str(i)) for i in range(2000)]
    assert all(0 <= v < 1 for v in values)
    assert 0.45 < sum(values) / len(values) < 0.55


@pytest.mark.parametrize(
    ("body", "headers", "rule"),
    [
        (chat(tools=[{"type": "function", "function": {"name": "f"}}]), {}, "cohorts[0] tool_required: has_tools"),
        (chat(), {"x-topic": "billing"}, "cohorts[1] billing_refund: any[0]: header"),
        (chat("refund"), {}, "cohorts[1] billing_refund: any[1]: content"),
        (chat(metadata={"queue": "policy"}), {}, "cohorts[2] policy_exception: metadata"),
        (chat(user="vip-1"), {}, "cohorts[3] vip: user"),
        (chat(response_format={"type": "json_object"}), {}, "cohorts[4] structured: response_format"),
        (chat("y" * 2500), {}, "cohorts[5] long_prompt: min_prompt_chars"),
        ({**chat(), "model": "merged-v1"}, {}, "cohorts[6] direct_merged: model"),
        (chat(), {"x-lang": "de"}, "cohorts[7] not_english: all"),
        (chat("z" * 10), {"x-topic": "none"}, "default cohort out_of_domain (no earlier cohort matched)"),
        (chat(), {}, "default cohort out_of_domain (no earlier cohort matched)"),
    ],
)
def test_explain_names_the_rule_for_every_matcher(body: dict[str, Any], headers: dict[str, str], rule: str) -> None:
    from gateway.routing.explain import explain, render_text

    result = explain(POLICY, CLASSIFIER, Planner(POLICY), body, headers=headers)
    assert result["rule"] == rule
    assert f"rule:     {rule}" in render_text(result)
    assert result["attempts"] and result["attempts"][0]["why"].startswith(("route target", "requested", "split arm"))
