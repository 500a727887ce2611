"""Offline evaluators on hand-made answers: applicability by case, expectations, tools, refusals, groundedness."""

from __future__ import annotations

from typing import Any

from gateway.evals.answer import FinishedAnswer, ToolCall
from gateway.promote.dataset import Case, Expect
from gateway.promote.grounding import content_words, overlap
from gateway.promote.scoring import CASE_EVALUATORS, ScoringSettings, is_subset, score

SETTINGS = ScoringSettings(groundedness_min=0.5)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "refund",
            "parameters": {
                "type": "object",
                "properties": {"order": {"type": "string"}, "amount": {"type": "number"}},
                "required": ["order"],
            },
        },
    },
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
]


def case(expect: dict[str, Any] | None = None, context: tuple[str, ...] = (), **body: Any) -> Case:
    request = {"messages": [{"role": "user", "content": "q"}], **body}
    return Case("c1", 1, "cohort", request, context, Expect.model_validate(expect or {}))


def answer(content: str | None = "", *calls: tuple[str, str], refusal: str | None = None) -> FinishedAnswer:
    tool_calls = tuple(ToolCall(f"id{i}", name, args) for i, (name, args) in enumerate(calls))
    return FinishedAnswer({}, content, tool_calls, "stop", refusal, 0.01, 0.02, 5)


def verdicts(c: Case, a: FinishedAnswer | None, error: str | None = None) -> dict[str, str]:
    request_answer = None if a is None else FinishedAnswer(c.body, *_fields(a))
    return {name: s.verdict for name, s in score(c, request_answer, error, SETTINGS).items()}


def _fields(a: FinishedAnswer) -> tuple[Any, ...]:
    return (a.content, a.tool_calls, a.finish_reason, a.refusal, a.ttft_s, a.total_s, a.completion_tokens)


def test_applicability_depends_on_the_case_only() -> None:
    plain = case()
    assert verdicts(plain, answer("hi")) == {}
    structured = case({"contains": "ok"}, response_format={"type": "json_object"})
    assert set(verdicts(structured, answer("{}"))) == {"task_completion", "json_valid"}
    tools = case({"tool_name": "refund"}, tools=TOOLS)
    assert set(verdicts(tools, answer("text"))) == {"task_completion", "tool_call_valid", "tool_selection"}
    grounded = case({"refusal": False}, context=("the sky",))
    assert set(verdicts(grounded, answer("sky"))) == {"task_completion", "refusal_correct", "groundedness_overlap"}


def test_no_answer_fails_every_applicable_evaluator() -> None:
    c = case({"refusal": False}, response_format={"type": "json_object"})
    outcomes = score(c, None, "timed out", SETTINGS)
    assert {n: (s.verdict, s.reason) for n, s in outcomes.items()} == {
        name: ("fail", "no answer: timed out") for name in ("task_completion", "json_valid", "refusal_correct")
    }


def test_task_completion_checks_every_expectation() -> None:
    c = case({"contains": ["Refund", "order 7"], "regex": r"\b7\b"})
    assert verdicts(c, answer("Your refund for ORDER 7 is done"))["task_completion"] == "pass"
    assert verdicts(c, answer("Your refund is done"))["task_completion"] == "fail"
    assert verdicts(case({"equals": " 42 "}), answer("42\n"))["task_completion"] == "pass"
    assert verdicts(case({"equals": {"a": [1]}}), answer('{"a": [1]}'))["task_completion"] == "pass"
    assert verdicts(case({"equals": {"a": [1]}}), answer('{"a": [2]}'))["task_completion"] == "fail"
    assert verdicts(case({"equals": {"a": 1}}), answer("not json"))["task_completion"] == "fail"


def test_json_schema_from_the_expectation_or_the_response_format() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    expected = case({"json_schema": schema})
    assert verdicts(expected, answer('{"ok": true}')) == {"task_completion": "pass", "json_schema": "pass"}
    assert verdicts(expected, answer('{"ok": 1}')) == {"task_completion": "fail", "json_schema": "fail"}
    requested = case(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert verdicts(requested, answer('{"ok": false}')) == {"json_valid": "pass", "json_schema": "pass"}
    assert verdicts(requested, answer('{"ok": false')) == {"json_valid": "fail", "json_schema": "fail"}


def test_tool_selection_wants_the_expected_tool_with_valid_arguments() -> None:
    c = case({"tool_name": "refund", "tool_args": {"order": "A1"}}, tools=TOOLS)
    good = answer(None, ("refund", '{"order": "A1", "amount": 3}'))
    assert verdicts(c, good) == {"task_completion": "pass", "tool_call_valid": "pass", "tool_selection": "pass"}
    wrong_args = answer(None, ("refund", '{"order": "B2"}'))
    assert verdicts(c, wrong_args)["tool_selection"] == "fail"
    assert verdicts(c, wrong_args)["tool_call_valid"] == "pass"
    wrong_tool = answer(None, ("lookup", "{}"))
    assert verdicts(c, wrong_tool)["tool_selection"] == "fail"
    invalid = answer(None, ("refund", '{"amount": 3}'))  # misses the required "order"
    assert verdicts(c, invalid) == {"task_completion": "fail", "tool_call_valid": "fail", "tool_selection": "fail"}
    assert verdicts(c, answer("I will look into it"))["tool_selection"] == "fail"


def test_subset_matching_is_recursive_for_objects_only() -> None:
    assert is_subset({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}, "d": 3})
    assert not is_subset({"a": {"b": 1}}, {"a": {"b": 2}})
    assert not is_subset({"a": [1]}, {"a": [1, 2]})
    assert not is_subset({"a": 1}, [1])


def test_refusal_correct_in_both_directions() -> None:
    must_refuse, must_answer = case({"refusal": True}), case({"refusal": False})
    refusal = answer("I'm sorry, but I can't help with that.")
    assert verdicts(must_refuse, refusal) == {"task_completion": "pass", "refusal_correct": "pass"}
    assert verdicts(must_answer, refusal) == {"task_completion": "fail", "refusal_correct": "fail"}
    assert verdicts(must_refuse, answer("Sure, here it is"))["refusal_correct"] == "fail"
    assert verdicts(must_refuse, answer("", refusal="policy"))["refusal_correct"] == "pass"


def test_groundedness_overlap_is_the_share_of_content_words_in_the_context() -> None:
    assert content_words("The refund, for Order 7, is APPROVED!") == ["refund", "order", "7", "approved"]
    share, words = overlap("Refunds within 30 days are approved", ["Items are refunded within 30 days."])
    assert words == 5 and share == 0.6  # within, 30, days; not refunds (no stemming), approved
    c = case(context=("Damaged items are refunded within 30 days of delivery.",))
    grounded = score(c, answer("Damaged items: refunded within 30 days."), None, SETTINGS)["groundedness_overlap"]
    assert grounded.verdict == "pass" and grounded.score == 1.0
    invented = score(c, answer("Call our hotline on weekends for vouchers."), None, SETTINGS)["groundedness_overlap"]
    assert invented.verdict == "fail" and invented.score == 0.0
    assert score(c, answer("the of and"), None, SETTINGS)["groundedness_overlap"].verdict == "fail"
    assert score(c, answer(None, ("lookup", "{}")), None, SETTINGS)["groundedness_overlap"].verdict == "n/a"


def test_registry_names_match_the_policy_schema() -> None:
    from typing import get_args

    from gateway.policy.schema import PromotionEvaluator
    from gateway.promote.judge import JUDGE_EVALUATORS

    assert set(get_args(PromotionEvaluator)) == {*CASE_EVALUATORS, *JUDGE_EVALUATORS}
