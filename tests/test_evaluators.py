"""Online evaluators as pure functions of a FinishedAnswer: pass, fail and n/a for each, and the registry."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.evals.answer import FinishedAnswer, ToolCall
from gateway.evals.evaluators import (
    ALWAYS_ON,
    DEFAULT_REFUSAL_PATTERNS,
    EVALUATORS,
    EvalSettings,
    Outcome,
    run_evaluators,
)
from gateway.evals.schemas import SchemaCache
from gateway.sim.engine import REFUSAL

CHAT: dict[str, Any] = {"model": "tiny-base", "messages": [{"role": "user", "content": "hi"}]}
JSON_OBJECT: dict[str, Any] = {**CHAT, "response_format": {"type": "json_object"}}
CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temp": {"type": "number"}},
    "required": ["city", "temp"],
    "additionalProperties": False,
}
JSON_SCHEMA: dict[str, Any] = {
    **CHAT,
    "response_format": {"type": "json_schema", "json_schema": {"name": "weather", "schema": CITY_SCHEMA}},
}
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK_TOOL: dict[str, Any] = {"type": "function", "function": {"name": "get_time"}}
TOOLS: dict[str, Any] = {**CHAT, "tools": [WEATHER_TOOL, CLOCK_TOOL]}
DEFAULT = EvalSettings()


def answer(
    content: str | None = "Hello there.",
    *,
    request: dict[str, Any] = CHAT,
    calls: tuple[ToolCall, ...] = (),
    finish_reason: str | None = "stop",
    refusal: str | None = None,
    ttft_s: float | None = 0.1,
    total_s: float = 1.0,
) -> FinishedAnswer:
    return FinishedAnswer(request, content, calls, finish_reason, refusal, ttft_s, total_s, 12)


def call(name: str | None = "get_weather", arguments: str = '{"city": "Paris"}') -> ToolCall:
    return ToolCall("chatcmpl-tool-1", name, arguments)


def tools(tool_choice: Any) -> dict[str, Any]:
    return {**TOOLS, "tool_choice": tool_choice}


CASES: list[tuple[str, FinishedAnswer, EvalSettings, str, str]] = [
    # (evaluator, answer, settings, verdict, a piece of the reason)
    ("json_valid", answer('{"a": [1, 2]}', request=JSON_OBJECT), DEFAULT, "pass", "valid JSON"),
    ("json_valid", answer('{"city": "x"}', request=JSON_SCHEMA), DEFAULT, "pass", "valid JSON"),
    ("json_valid", answer('{"a": 1', request=JSON_OBJECT), DEFAULT, "fail", "content is not valid JSON: "),
    ("json_valid", answer("", request=JSON_OBJECT), DEFAULT, "fail", "not valid JSON"),
    ("json_valid", answer(None, request=JSON_OBJECT), DEFAULT, "fail", "no content"),
    ("json_valid", answer("not json"), DEFAULT, "n/a", "no JSON response_format"),
    ("json_valid", answer("x", request={**CHAT, "response_format": {"type": "text"}}), DEFAULT, "n/a", "n/a:"),
    ("json_valid", answer("x", request={**CHAT, "response_format": "json_object"}), DEFAULT, "n/a", "n/a:"),
    ("json_valid", answer("", request=JSON_OBJECT, calls=(call(),)), DEFAULT, "n/a", "tool call"),
    ("json_schema", answer('{"city": "Paris", "temp": 21.5}', request=JSON_SCHEMA), DEFAULT, "pass", "matches"),
    ("json_schema", answer('{"city": "Paris"}', request=JSON_SCHEMA), DEFAULT, "fail", "'temp' is a required"),
    ("json_schema", answer('{"city": 1, "temp": 0}', request=JSON_SCHEMA), DEFAULT, "fail", "at $.city: 1 is not"),
    ("json_schema", answer('{"city": ', request=JSON_SCHEMA), DEFAULT, "fail", "content is not valid JSON"),
    ("json_schema", answer(None, request=JSON_SCHEMA), DEFAULT, "fail", "no content"),
    ("json_schema", answer('{"a": 1}', request=JSON_OBJECT), DEFAULT, "n/a", "no json_schema"),
    ("json_schema", answer('{"a": 1}'), DEFAULT, "n/a", "no json_schema"),
    (
        "json_schema",
        answer("{}", request={**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
        DEFAULT,
        "n/a",
        "no json_schema",
    ),
    (
        "json_schema",
        answer(
            "{}", request={**CHAT, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 3}}}}
        ),
        DEFAULT,
        "n/a",
        "the requested schema cannot be applied",
    ),
    (
        "json_schema",
        answer(
            "{}",
            request={
                **CHAT,
                "response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "https://e.x/s"}}},
            },
        ),
        DEFAULT,
        "n/a",
        "Unresolvable",
    ),
    ("json_schema", answer("", request=JSON_SCHEMA, calls=(call(),)), DEFAULT, "n/a", "tool call"),
    ("tool_call_valid", answer("", request=TOOLS, calls=(call(),)), DEFAULT, "pass", "1 valid tool call"),
    (
        "tool_call_valid",
        answer(None, request=TOOLS, calls=(call(), call("get_time", "{}"))),
        DEFAULT,
        "pass",
        "2 valid",
    ),
    ("tool_call_valid", answer("Sunny.", request=TOOLS), DEFAULT, "pass", "answered in text"),
    ("tool_call_valid", answer("Sunny.", request=tools("auto")), DEFAULT, "pass", "answered in text"),
    ("tool_call_valid", answer("", request=tools("required"), calls=(call(),)), DEFAULT, "pass", "valid"),
    ("tool_call_valid", answer("Sunny.", request=tools("none")), DEFAULT, "pass", "answered in text"),
    (
        "tool_call_valid",
        answer("", request=tools({"type": "function", "function": {"name": "get_weather"}}), calls=(call(),)),
        DEFAULT,
        "pass",
        "valid",
    ),
    (
        "tool_call_valid",
        answer("", request=TOOLS, calls=(call("get_news"),)),
        DEFAULT,
        "fail",
        "undeclared function 'get_news'",
    ),
    ("tool_call_valid", answer("", request=TOOLS, calls=(call(None),)), DEFAULT, "fail", "undeclared function None"),
    (
        "tool_call_valid",
        answer("", request=TOOLS, calls=(call(arguments="0.0"),)),
        DEFAULT,
        "fail",
        "not a JSON object",
    ),
    ("tool_call_valid", answer("", request=TOOLS, calls=(call(arguments='{"ci'),)), DEFAULT, "fail", "not valid JSON"),
    ("tool_call_valid", answer("", request=TOOLS, calls=(call(arguments=""),)), DEFAULT, "fail", "not valid JSON"),
    (
        "tool_call_valid",
        answer("", request=TOOLS, calls=(call(arguments="{}"),)),
        DEFAULT,
        "fail",
        "'city' is a required",
    ),
    (
        "tool_call_valid",
        answer("", request=TOOLS, calls=(call(), call(arguments='{"city": 3}'))),
        DEFAULT,
        "fail",
        "tool call 1 (get_weather) arguments do not match at $.city",
    ),
    ("tool_call_valid", answer("Sunny.", request=tools("required")), DEFAULT, "fail", "required but the answer has no"),
    ("tool_call_valid", answer("", request=tools("none"), calls=(call(),)), DEFAULT, "fail", "tool_choice is none"),
    (
        "tool_call_valid",
        answer("Sunny.", request=tools({"type": "function", "function": {"name": "get_weather"}})),
        DEFAULT,
        "fail",
        "names get_weather but the answer has no tool call",
    ),
    (
        "tool_call_valid",
        answer(
            "",
            request=tools({"type": "function", "function": {"name": "get_weather"}}),
            calls=(call("get_time", "{}"),),
        ),
        DEFAULT,
        "fail",
        "names get_weather but the answer called get_time",
    ),
    ("tool_call_valid", answer("Sunny."), DEFAULT, "n/a", "no tools"),
    ("tool_call_valid", answer("Sunny.", request={**CHAT, "tools": []}), DEFAULT, "n/a", "no tools"),
    ("tool_call_valid", answer("", request={**CHAT, "tools": {"a": 1}}, calls=(call(),)), DEFAULT, "n/a", "no tools"),
    (
        "tool_call_valid",
        answer(
            "",
            request={**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 1}}}]},
            calls=(call("f", "{}"),),
        ),
        DEFAULT,
        "n/a",
        "parameters schema of f cannot be applied",
    ),
    ("not_truncated", answer(finish_reason="stop"), DEFAULT, "pass", "stop"),
    ("not_truncated", answer(finish_reason="tool_calls"), DEFAULT, "pass", "tool_calls"),
    ("not_truncated", answer(finish_reason="length"), DEFAULT, "fail", "token limit"),
    ("not_truncated", answer(finish_reason=None), DEFAULT, "n/a", "no finish_reason"),
    ("non_empty", answer("  a "), DEFAULT, "pass", "has content"),
    ("non_empty", answer("", calls=(call(),)), DEFAULT, "pass", "tool calls"),
    ("non_empty", answer(" \n\t"), DEFAULT, "fail", "no content and no tool call"),
    ("non_empty", answer(None), DEFAULT, "fail", "no content"),
    ("no_refusal", answer("Paris is the capital of France."), DEFAULT, "pass", "no refusal"),
    ("no_refusal", answer("Here is why people say 'I'm sorry, but I can't' so often."), DEFAULT, "pass", "no refusal"),
    ("no_refusal", answer(None, calls=(call(),)), DEFAULT, "pass", "no refusal"),
    ("no_refusal", answer("I'm sorry, but I can't help with that."), DEFAULT, "fail", "refusal pattern"),
    ("no_refusal", answer("  i cannot help with this request"), DEFAULT, "fail", "refusal pattern"),
    ("no_refusal", answer("I can\u2019t assist with that."), DEFAULT, "fail", "refusal pattern"),
    ("no_refusal", answer("As an AI language model, I"), DEFAULT, "fail", "refusal pattern"),
    ("no_refusal", answer("I'm unable to help with that."), DEFAULT, "fail", "refusal pattern"),
    ("no_refusal", answer(None, refusal="Not allowed."), DEFAULT, "fail", "the backend set a refusal: Not allowed."),
    ("no_refusal", answer("Nope, no way."), EvalSettings(refusal_patterns=(re.compile("no way"),)), "fail", "'no way'"),
    ("no_refusal", answer("I'm sorry, but I can't."), EvalSettings(refusal_patterns=()), "pass", "no refusal"),
    ("latency_slo", answer(ttft_s=0.2, total_s=1.0), EvalSettings(ttft_slo_s=0.5, total_slo_s=2.0), "pass", "within"),
    ("latency_slo", answer(ttft_s=None, total_s=1.0), EvalSettings(ttft_slo_s=0.5, total_slo_s=2.0), "pass", "total"),
    ("latency_slo", answer(ttft_s=0.5, total_s=2.0), EvalSettings(ttft_slo_s=0.5, total_slo_s=2.0), "pass", "within"),
    (
        "latency_slo",
        answer(ttft_s=0.75, total_s=1.0),
        EvalSettings(ttft_slo_s=0.5),
        "fail",
        "ttft 0.750s over the 0.500s SLO by 0.250s",
    ),
    (
        "latency_slo",
        answer(ttft_s=0.1, total_s=3.5),
        EvalSettings(ttft_slo_s=0.5, total_slo_s=2.0),
        "fail",
        "total 3.500s over the 2.000s SLO by 1.500s",
    ),
    (
        "latency_slo",
        answer(ttft_s=1.0, total_s=3.0),
        EvalSettings(ttft_slo_s=0.5, total_slo_s=2.0),
        "fail",
        "ttft 1.000s over the 0.500s SLO by 0.500s; total",
    ),
    ("latency_slo", answer(ttft_s=9.0, total_s=9.0), DEFAULT, "n/a", "no latency SLO"),
    ("latency_slo", answer(ttft_s=None), EvalSettings(ttft_slo_s=0.5), "n/a", "time to first token unknown"),
]


@pytest.mark.parametrize(("name", "finished", "eval_settings", "verdict", "reason"), CASES)
def test_evaluator(name: str, finished: FinishedAnswer, eval_settings: EvalSettings, verdict: str, reason: str) -> None:
    outcome = EVALUATORS[name].evaluate(finished, eval_settings)
    assert outcome.verdict == verdict, outcome.reason
    assert reason in outcome.reason
    assert outcome.verdict != "n/a" or outcome.reason.startswith("n/a: ")


def test_every_evaluator_has_pass_fail_and_na_cases() -> None:
    """Every evaluator is tested in all three verdicts; non_empty and no_refusal always apply, so have no n/a."""
    seen = {(name, verdict) for name, _, _, verdict, _ in CASES}
    for name in EVALUATORS:
        verdicts = {"pass", "fail"} if name in ("non_empty", "no_refusal") else {"pass", "fail", "n/a"}
        assert {(name, v) for v in verdicts} <= seen, name


def test_json_valid_reason_carries_the_parse_error() -> None:
    outcome = EVALUATORS["json_valid"].evaluate(answer("nope", request=JSON_OBJECT), DEFAULT)
    assert outcome.reason.startswith("content is not valid JSON: ")
    assert "line 1 column 1" in outcome.reason


def test_simulator_refusal_fails() -> None:
    assert EVALUATORS["no_refusal"].evaluate(answer(REFUSAL), DEFAULT).verdict == "fail"


def test_default_refusal_patterns_are_case_insensitive_and_compiled() -> None:
    assert DEFAULT_REFUSAL_PATTERNS
    assert all(p.flags & re.IGNORECASE for p in DEFAULT_REFUSAL_PATTERNS)


def test_long_reasons_are_capped() -> None:
    outcome = EVALUATORS["no_refusal"].evaluate(answer(None, refusal="x" * 1000), DEFAULT)
    assert outcome.verdict == "fail"
    assert len(outcome.reason) == 200
    assert outcome.reason.endswith("…")


def test_registry_names_match_and_always_on_are_registered() -> None:
    assert set(EVALUATORS) == {*ALWAYS_ON, "no_refusal", "latency_slo"}
    assert all(evaluator.name == name for name, evaluator in EVALUATORS.items())
    assert ALWAYS_ON == ("json_valid", "json_schema", "tool_call_valid", "not_truncated", "non_empty")


def test_run_evaluators_runs_the_named_ones_in_order() -> None:
    finished = answer('{"city": "Paris", "temp": 3}', request=JSON_SCHEMA, finish_reason="length")
    outcomes = run_evaluators(["not_truncated", "json_schema", "no_refusal"], finished, DEFAULT)
    assert list(outcomes) == ["not_truncated", "json_schema", "no_refusal"]
    assert [o.verdict for o in outcomes.values()] == ["fail", "pass", "pass"]


def test_run_evaluators_unknown_name_raises() -> None:
    with pytest.raises(KeyError, match="judge_llm"):
        run_evaluators(["non_empty", "judge_llm"], answer(), DEFAULT)


def test_run_evaluators_with_another_registry() -> None:
    class Always:
        name = "always"

        def evaluate(self, answer: FinishedAnswer, settings: EvalSettings) -> Outcome:
            return Outcome("pass", "always")

    assert run_evaluators(["always"], answer(), DEFAULT, registry={"always": Always()}) == {
        "always": Outcome("pass", "always")
    }


def test_schema_cache_reuses_and_bounds_validators() -> None:
    cache = SchemaCache(maxsize=2)
    assert cache.first_error({"type": "string", "minLength": 1}, "a") == (None, None)
    # Same schema with its keys in another order: one compiled validator, found by canonical JSON.
    assert cache.first_error({"minLength": 1, "type": "string"}, "") == ("$: '' should be non-empty", None)
    assert cache.first_error({"type": "integer"}, 1) == (None, None)
    assert cache.first_error({"type": "boolean"}, 1) == ("$: 1 is not of type 'boolean'", None)
    info = cache._compile.cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 3, 2)


def test_schema_cache_reports_invalid_schema() -> None:
    error, schema_error = SchemaCache().first_error({"type": "objekt"}, {})
    assert error is None
    assert schema_error is not None and "objekt" in schema_error


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
SCHEMA = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["object", "string", "array", "number", "nope"]) | JSON,
        "properties": st.dictionaries(st.text(max_size=4), JSON, max_size=2),
        "required": st.lists(st.text(max_size=4), max_size=2) | JSON,
        "$ref": st.sampled_from(["#", "#/x", "https://e.x/s", "urn:x"]),
        "pattern": st.sampled_from(["^a", "(", "[", "x*"]),
    },
)
TOOL = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "other"]) | JSON},
    optional={
        "function": st.fixed_dictionaries(
            {"name": st.sampled_from(["f", "g"]) | JSON}, optional={"parameters": SCHEMA | JSON}
        )
    },
)
REQUEST = st.fixed_dictionaries(
    {},
    optional={
        "response_format": st.fixed_dictionaries(
            {"type": st.sampled_from(["json_object", "json_schema", "text"]) | JSON},
            optional={"json_schema": st.fixed_dictionaries({}, optional={"schema": SCHEMA | JSON}) | JSON},
        )
        | JSON,
        "tools": st.lists(TOOL | JSON, max_size=3) | JSON,
        "tool_choice": st.sampled_from(["auto", "none", "required"])
        | st.fixed_dictionaries(
            {
                "type": st.just("function"),
                "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "g"]) | JSON}),
            }
        )
        | JSON,
    },
)
TEXT = (
    st.text(max_size=40) | st.sampled_from(["{}", '{"a": 1}', "[1]", "I'm sorry, but I can't", "null"]) | JSON.map(repr)
)
FINISHED = st.builds(
    FinishedAnswer,
    request=REQUEST,
    content=st.none() | TEXT,
    tool_calls=st.lists(
        st.builds(
            ToolCall,
            id=st.none() | st.text(max_size=5),
            name=st.none() | st.sampled_from(["f", "g", "h"]),
            arguments=TEXT,
        ),
        max_size=3,
    ).map(tuple),
    finish_reason=st.none() | st.sampled_from(["stop", "length", "tool_calls"]) | st.text(max_size=5),
    refusal=st.none() | st.text(max_size=10),
    ttft_s=st.none() | st.floats(allow_nan=True),
    total_s=st.floats(allow_nan=True),
    completion_tokens=st.none() | st.integers(),
)
SETTINGS = st.builds(
    EvalSettings,
    refusal_patterns=st.sampled_from([DEFAULT_REFUSAL_PATTERNS, (), (re.compile("a"),)]),
    ttft_slo_s=st.none() | st.floats(allow_nan=True),
    total_slo_s=st.none() | st.floats(allow_nan=True),
)


@settings(max_examples=300, deadline=None)
@given(FINISHED, SETTINGS)
def test_no_evaluator_ever_raises(finished: FinishedAnswer, eval_settings: EvalSettings) -> None:
    outcomes = run_evaluators(EVALUATORS, finished, eval_settings)
    assert set(outcomes) == set(EVALUATORS)
    for outcome in outcomes.values():
        assert outcome.verdict in ("pass", "fail", "n/a")
        assert isinstance(outcome.reason, str) and 0 < len(outcome.reason) <= 200
