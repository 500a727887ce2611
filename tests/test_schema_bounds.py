"""Client JSON Schemas are applied with bounded work: catastrophic regexes, fan-out and escape hatches stay cheap.

Each schema here takes Python's ``re`` (or an unmetered jsonschema) seconds or longer; the checks must end in a
few milliseconds, with the right verdict or n/a, never a failure the model did not earn.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.evals.answer import FinishedAnswer, ToolCall
from gateway.evals.evaluators import EVALUATORS, EvalSettings, Outcome, ToolCallValid
from gateway.evals.schemas import SchemaCache

QUICK_S = 0.5
EXPLODES_IN_RE = "(?:[a-z]?){1000}!"  # about 8 s in `re` on "aa", and far longer on anything longer
BIG_PROGRAM = "^(?:" + "|".join(f"w{i}q" for i in range(2000)) + ")$"  # quick in `re`, large for RE2


def timed(check: Any, *args: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = check(*args)
    return result, time.monotonic() - started


def structured(schema: Any, content: str) -> FinishedAnswer:
    request = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    }
    return FinishedAnswer(request, content, (), "stop", None, 0.1, 1.0, 12)


def json_schema(schema: Any, content: str) -> tuple[Outcome, float]:
    outcome, took = timed(EVALUATORS["json_schema"].evaluate, structured(schema, content), EvalSettings())
    assert isinstance(outcome, Outcome)
    return outcome, took


def test_a_catastrophic_pattern_gets_its_verdict_quickly() -> None:
    outcome, took = json_schema({"type": "string", "pattern": EXPLODES_IN_RE}, '"aa"')
    assert took < QUICK_S
    assert outcome.verdict == "fail" and "does not match" in outcome.reason
    matching, took = json_schema({"type": "string", "pattern": "^(a|aa)+$|!$"}, '"' + "a" * 38 + '!"')
    assert took < QUICK_S and matching.verdict == "pass", matching.reason


def test_pattern_properties_and_additional_properties_run_on_the_bounded_engine() -> None:
    schema = {"type": "object", "patternProperties": {EXPLODES_IN_RE: {}}, "additionalProperties": False}
    outcome, took = json_schema(schema, '{"aa": 1}')
    assert took < QUICK_S
    assert outcome.verdict == "fail" and "does not match any of the regexes" in outcome.reason
    names = {"type": "object", "propertyNames": {"pattern": EXPLODES_IN_RE}}
    outcome, took = json_schema(names, '{"aa": 1}')
    assert took < QUICK_S and outcome.verdict == "fail"


def test_a_match_over_the_regex_budget_is_not_applicable() -> None:
    outcome, took = json_schema({"type": "string", "pattern": BIG_PROGRAM}, '"' + "a" * 1000 + '"')
    assert took < QUICK_S
    assert outcome.verdict == "n/a" and "budget" in outcome.reason


def test_a_schema_that_fans_out_runs_out_of_time_as_not_applicable() -> None:
    depth = 16  # 2**16 paths: seconds in plain jsonschema
    defs: dict[str, Any] = {f"a{i}": {"anyOf": [{"$ref": f"#/$defs/a{i + 1}"}] * 2} for i in range(depth)}
    defs[f"a{depth}"] = False
    outcome, took = json_schema({"$defs": defs, "$ref": "#/$defs/a0"}, "1")
    assert took < QUICK_S
    assert outcome.verdict == "n/a" and "time budget" in outcome.reason


def test_no_part_of_a_schema_can_leave_the_bounded_validator() -> None:
    draft7 = "http://json-schema.org/draft-07/schema#"
    escapes = [
        {"type": "object", "properties": {"x": {"$schema": draft7, "pattern": EXPLODES_IN_RE}}},
        {"$defs": {"x": {"$id": "https://json-schema.org/draft/2020-12/schema"}}, "$ref": "#/$defs/x"},
        {"$dynamicAnchor": "meta", "$ref": "https://json-schema.org/draft/2020-12/schema"},
        {"unevaluatedProperties": False, "patternProperties": {EXPLODES_IN_RE: {}}},
    ]
    for schema in escapes:
        outcome, took = json_schema(schema, '{"x": "aa", "aa": 1}')
        assert took < QUICK_S, schema
        assert outcome.verdict == "n/a", (schema, outcome)
    # The root's own $schema and $id only name its dialect and base: the schema is still applied.
    root = {"$schema": draft7, "$id": "https://example.com/s", "type": "string", "pattern": EXPLODES_IN_RE}
    outcome, took = json_schema(root, '"aa"')
    assert took < QUICK_S and outcome.verdict == "fail"


def test_patterns_the_bounded_engine_cannot_run_are_not_applicable() -> None:
    outcome, _ = json_schema({"type": "string", "pattern": "^(?=a)a$"}, '"a"')
    assert outcome.verdict == "n/a" and "RE2" in outcome.reason
    outcome, _ = json_schema({"type": "string", "pattern": "^a*$"}, '"aaa"')
    assert outcome.verdict == "pass"


def test_a_schema_over_the_size_cap_is_not_applicable() -> None:
    cache = SchemaCache(max_schema_bytes=1024)
    assert cache.first_error({"type": "string", "description": "x" * 2000}, "a") == (
        None,
        "the schema is over 1024 bytes",
    )
    assert cache.first_error({"type": "string"}, 1) == ("$: 1 is not of type 'string'", None)


def test_tool_calls_of_one_answer_share_one_budget() -> None:
    schemas = SchemaCache(regex_steps=5_000)
    parameters = {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[a-z]+$"}}}
    tool = {"type": "function", "function": {"name": "lookup", "parameters": parameters}}
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    arguments = '{"id": "' + "a" * 400 + '"}'  # about 1,600 RE2 steps for each call

    def answer(calls: int) -> FinishedAnswer:
        made = tuple(ToolCall(f"call-{i}", "lookup", arguments) for i in range(calls))
        return FinishedAnswer(request, None, made, "tool_calls", None, 0.1, 1.0, 12)

    evaluator = ToolCallValid(schemas)
    assert evaluator.evaluate(answer(3), EvalSettings()).verdict == "pass"
    over = evaluator.evaluate(answer(4), EvalSettings())
    assert over.verdict == "n/a" and "budget" in over.reason
