"""Eval datasets: every bad line is refused with its line number, and nothing is skipped silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.promote.dataset import DatasetError, load_dataset

COHORTS = ["tool_required", "billing_refund", "out_of_domain"]
GOOD = {"cohort": "billing_refund", "prompt": "refund please", "expect": {"contains": "refund"}}


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def error_of(tmp_path: Path, *lines: str) -> DatasetError:
    with pytest.raises(DatasetError) as caught:
        load_dataset(write(tmp_path, *lines), COHORTS)
    return caught.value


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not a JSON line: "),
        ("[1, 2]", "a case is a JSON object"),
        ('{"cohort": "billing_refund"}', "a case needs exactly one of 'messages' or 'prompt'"),
        ('{"cohort": "billing_refund", "prompt": "a", "messages": [{"role": "user"}]}', "exactly one of"),
        ('{"cohort": "billing_refund", "prompt": "a", "expect": {"contians": "x"}}', "expect.contians: unknown key"),
        ('{"cohort": "billing_refund", "prompt": "a", "expect": {"regex": "("}}', "expect.regex: invalid regex"),
        ('{"cohort": "billing_refund", "prompt": "a", "expect": {"refusal": "no"}}', "expect.refusal: "),
        (
            '{"cohort": "biling_refund", "prompt": "a"}',
            "unknown cohort 'biling_refund' (did you mean 'billing_refund'?)",
        ),
        ('{"cohort": "billing_refund", "messages": [{"content": "a"}]}', "messages[0] needs a 'role'"),
        ('{"cohort": "billing_refund", "prompt": "a", "tool_choice": "sometimes"}', "tool_choice"),
        ('{"cohort": "billing_refund", "prompt": "a", "response_format": {"type": "xml"}}', "response_format.type"),
        ('{"cohort": "billing_refund", "prompt": "a", "max_tokens": 0}', "max_tokens: "),
    ],
)
def test_a_bad_line_names_its_line_and_problem(tmp_path: Path, bad: str, message: str) -> None:
    error = error_of(tmp_path, json.dumps(GOOD), "", bad, json.dumps(GOOD))
    assert error.line == 3
    assert str(error).startswith(f"{tmp_path / 'cases.jsonl'}:3: ")
    assert message in str(error)


def test_duplicate_ids_and_empty_files_are_errors(tmp_path: Path) -> None:
    case = json.dumps({**GOOD, "id": "a"})
    assert str(error_of(tmp_path, case, case)).endswith(":2: duplicate id 'a' (first on line 1)")
    assert "the dataset has no cases" in str(error_of(tmp_path, "# only a comment", ""))
    with pytest.raises(DatasetError, match="cannot read the dataset"):
        load_dataset(tmp_path / "missing.jsonl", COHORTS)


def test_cases_become_request_bodies(tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    lines = [
        "# a comment",
        json.dumps(GOOD),
        json.dumps(
            {
                "id": "t1",
                "cohort": "tool_required",
                "messages": [{"role": "user", "content": "where?"}],
                "tools": tools,
                "tool_choice": "required",
                "context": ["passage one", "passage two"],
                "max_tokens": 50,
                "expect": {"tool_name": "lookup", "equals": None},
            }
        ),
    ]
    first, second = load_dataset(write(tmp_path, *lines), COHORTS)
    assert first.id == "line-2" and first.line == 2
    assert first.body == {"messages": [{"role": "user", "content": "refund please"}]}
    assert first.expect.substrings == ("refund",) and not first.expect.empty
    assert second.id == "t1" and second.context == ("passage one", "passage two")
    assert second.body["tools"] == tools and second.body["tool_choice"] == "required"
    assert second.body["max_tokens"] == 50 and "response_format" not in second.body
    system, user = second.body["messages"]
    assert system["role"] == "system" and "[1] passage one\n\n[2] passage two" in system["content"]
    assert user == {"role": "user", "content": "where?"}
    assert second.expect.has_equals and second.expect.equals is None


def test_an_expectation_free_case_is_allowed(tmp_path: Path) -> None:
    [case] = load_dataset(write(tmp_path, '{"cohort": "out_of_domain", "prompt": "hi"}'), COHORTS)
    assert case.expect.empty
