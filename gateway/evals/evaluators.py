"""Online evaluators: cheap, pure checks of one FinishedAnswer, registered by name in EVALUATORS.

Each evaluator returns an Outcome whose verdict is ``pass``, ``fail`` or ``n/a`` (the check does not apply to this
request, e.g. ``json_valid`` when no JSON was asked for), with a short reason for humans. Evaluators never raise on
odd input: requests and answers are client and backend data, so every shape is checked before it is used.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

from gateway.evals.answer import FinishedAnswer
from gateway.evals.schemas import SchemaCache

Verdict = Literal["pass", "fail", "n/a"]

_REASON_MAX = 200
_APOSTROPHE = "['\u2019]"
_REFUSAL_OPENINGS = (
    rf"I{_APOSTROPHE}?m sorry,? but I (?:can{_APOSTROPHE}?t|cannot|can not|am unable|won{_APOSTROPHE}?t)",
    rf"I (?:can{_APOSTROPHE}?t|cannot|can not|am unable to|won{_APOSTROPHE}?t) (?:help|assist|comply|provide)",
    rf"I{_APOSTROPHE}?m (?:not able|unable) to (?:help|assist|comply|provide)",
    r"I apologi[sz]e,? but I",
    r"As an AI\b",
)
DEFAULT_REFUSAL_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(rf"\A\s*{opening}", re.IGNORECASE) for opening in _REFUSAL_OPENINGS
)
"""Typical refusals at the start of an answer (a refusal quoted mid-answer is not one)."""

ALWAYS_ON = ("json_valid", "json_schema", "tool_call_valid", "not_truncated", "non_empty")
"""Cheap evaluators that are ``n/a`` whenever they do not apply, so every cohort can run them."""


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    reason: str


@dataclass(frozen=True, slots=True)
class EvalSettings:
    """Per-cohort settings from the policy; SLOs in seconds, None meaning no SLO."""

    refusal_patterns: tuple[re.Pattern[str], ...] = DEFAULT_REFUSAL_PATTERNS
    ttft_slo_s: float | None = None
    total_slo_s: float | None = None


class Evaluator(Protocol):
    name: str

    def evaluate(self, answer: FinishedAnswer, settings: EvalSettings) -> Outcome: ...


@functools.lru_cache(maxsize=1024)  # outcomes are immutable, and most reasons are constant strings
def _outcome(verdict: Verdict, reason: str) -> Outcome:
    return Outcome(verdict, reason if len(reason) <= _REASON_MAX else reason[: _REASON_MAX - 1] + "…")


def _mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _parse_json(text: str) -> tuple[Any, str | None]:
    """(value, None) or (None, the parse error)."""
    try:
        return orjson.loads(text), None
    except orjson.JSONDecodeError as exc:
        return None, str(exc)


def _answered_with_tool_call(answer: FinishedAnswer) -> bool:
    return bool(answer.tool_calls) and not (answer.content or "").strip()


class JsonValid:
    name = "json_valid"

    def evaluate(self, answer: FinishedAnswer, settings: EvalSettings) -> Outcome:
        response_format = _mapping(answer.request.get("response_format")) or {}
        if response_format.get("type") not in ("json_object", "json_schema"):
            return _outcome("n/a", "n/a: no JSON response_format requested")
        if _answered_with_tool_call(answer):
            return _outcome("n/a", "n/a: answered with a tool call")
        if answer.content is None:
            return _outcome("fail", "no content to parse as JSON")
        _, error = _parse_json(answer.content)
        if error is not None:
            return _outcome("fail", f"content is not valid JSON: {error}")
        return _outcome("pass", "content is valid JSON")


class JsonSchemaMatch:
    name = "json_schema"

    def __init__(self, schemas: SchemaCache) -> None:
        self._schemas = schemas

    def evaluate(self, answer: FinishedAnswer, settings: EvalSettings) -> Outcome:
        response_format = _mapping(answer.request.get("response_format")) or {}
        spec = _mapping(response_format.get("json_schema")) or {}
        schema = spec.get("schema") if response_format.get("type") == "json_schema" else None
        if not isinstance(schema, Mapping):
            return _outcome("n/a", "n/a: no json_schema response_format requested")
        if _answered_with_tool_call(answer):
            return _outcome("n/a", "n/a: answered with a tool call")
        if answer.content is None:
            return _outcome("fail", "no content to validate")
        value, parse_error = _parse_json(answer.content)
        if parse_error is not None:
            return _outcome("fail", f"content is not valid JSON: {parse_error}")
        error, schema_error = self._schemas.first_error(schema, value)
        if schema_error is not None:
            return _outcome("n/a", f"n/a: the requested schema cannot be applied: {schema_error}")
        if error is not None:
            return _outcome("fail", f"content does not match the schema at {error}")
        return _outcome("pass", "content matches the schema")


class ToolCallValid:
    """Tool calls name declared functions with arguments that are a JSON object matching ``function.parameters``.

    An object is required even when a tool declares no parameters: OpenAI's wire format always sends the arguments
    of a function call as a JSON object (``"{}"`` for none).
    """

    name = "tool_call_valid"

    def __init__(self, schemas: SchemaCache) -> None:
        self._schemas = schemas

    def evaluate(self, answer: FinishedAnswer, settings: EvalSettings) -> Outcome:
        tools = answer.request.get("tools")
        if not isinstance(tools, list) or not tools:
            return _outcome("n/a", "n/a: no tools offered")
        choice_problem = self._choice_problem(answer)
        if choice_problem is not None:
            return _outcome("fail", choice_problem)
        if not answer.tool_calls:
            return _outcome("pass", "answered in text, which tool_choice allows")
        declared = _declared_functions(tools)
        budget = self._schemas.budget()  # one budget for the whole answer, however many calls it makes
        for position, call in enumerate(answer.tool_calls):
            if call.name is None or call.name not in declared:
                return _outcome("fail", f"tool call {position} names an undeclared function {call.name!r}")
            arguments, parse_error = _parse_json(call.arguments)
            if parse_error is not None:
                return _outcome(
                    "fail", f"tool call {position} ({call.name}) arguments are not valid JSON: {parse_error}"
                )
            if not isinstance(arguments, dict):
                return _outcome("fail", f"tool call {position} ({call.name}) arguments are not a JSON object")
            parameters = declared[call.name]
            if parameters is None:
                continue
            error, schema_error = self._schemas.first_error(parameters, arguments, budget)
            if schema_error is not None:
                return _outcome("n/a", f"n/a: the parameters schema of {call.name} cannot be applied: {schema_error}")
            if error is not None:
                return _outcome("fail", f"tool call {position} ({call.name}) arguments do not match at {error}")
        return _outcome("pass", f"{len(answer.tool_calls)} valid tool call(s)")

    @staticmethod
    def _choice_problem(answer: FinishedAnswer) -> str | None:
        """Why the answer breaks ``tool_choice``, or None when it keeps to it."""
        tool_choice = answer.request.get("tool_choice")
        if tool_choice == "none":
            return "tool_choice is none but the answer called a tool" if answer.tool_calls else None
        if tool_choice == "required":
            return None if answer.tool_calls else "tool_choice is required but the answer has no tool call"
        function = tool_choice.get("function") if isinstance(tool_choice, Mapping) else None
        wanted = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(wanted, str):
            return None
        if not answer.tool_calls:
            return f"tool_choice names {wanted} but the answer has no tool call"
        others = sorted({str(call.name) for call in answer.tool_calls if call.name != wanted})
        return f"tool_choice names {wanted} but the answer called {', '.join(others)}" if others else None


def _declared_functions(tools: list[Any]) -> dict[str, Any]:
    """Function name → its ``parameters`` schema (None when it has none) for each well-formed function tool."""
    declared: dict[str, Any] = {}
    for tool in tools:
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            continue
        function = tool.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            declared[function["name"]] = parameters if isinstance(parameters, Mapping) else None
    return declared


class NotTruncated:
    name = "not_truncated"

    def evaluate(self, answer: FinishedAnswer, settings: EvalSettings) -> Outcome:
        if answer.finish_reason is None:
            return _outcome("n/a", "n/a: no finish_reason")
        if answer.finish_reason == "length":
            return _outcome("fail", "cut short at the token limit (finish_reason length)")
        return _outcome("pass", f"finish_reason {answer.finish_reason}")


class NonEmpty:
    name = "non_empty"

    def evaluate(self, answer: FinishedAnswer, settings: EvalSettings) -> Outcome:
        if answer.tool_calls:
            return _outcome("pass", "has tool calls")
        if answer.content and answer.content.strip():
            return _outcome("pass", "has content")
        return _outcome("fail", "no content and no tool call")


class NoRefusal:
    name = "no_refusal"

    def evaluate(self, answer: FinishedAnswer, settings: EvalSettings) -> Outcome:
        if answer.refusal and answer.refusal.strip():
            return _outcome("fail", f"the backend set a refusal: {answer.refusal}")
        content = answer.content or ""
        for pattern in settings.refusal_patterns:
            if pattern.search(content):
                return _outcome("fail", f"content matches refusal pattern {pattern.pattern!r}")
        return _outcome("pass", "no refusal")


class LatencySlo:
    name = "latency_slo"

    def evaluate(self, answer: FinishedAnswer, settings: EvalSettings) -> Outcome:
        if settings.ttft_slo_s is None and settings.total_slo_s is None:
            return _outcome("n/a", "n/a: no latency SLO")
        checks = (("ttft", answer.ttft_s, settings.ttft_slo_s), ("total", answer.total_s, settings.total_slo_s))
        measured = [(what, took, slo) for what, took, slo in checks if took is not None and slo is not None]
        if not measured:
            return _outcome("n/a", "n/a: time to first token unknown")
        over = [
            f"{what} {took:.3f}s over the {slo:.3f}s SLO by {took - slo:.3f}s"
            for what, took, slo in measured
            if took > slo
        ]
        if over:
            return _outcome("fail", "; ".join(over))
        return _outcome("pass", ", ".join(f"{what} {took:.3f}s within {slo:.3f}s" for what, took, slo in measured))


_SCHEMAS = SchemaCache()
EVALUATORS: dict[str, Evaluator] = {
    evaluator.name: evaluator
    for evaluator in (
        JsonValid(),
        JsonSchemaMatch(_SCHEMAS),
        ToolCallValid(_SCHEMAS),
        NotTruncated(),
        NonEmpty(),
        NoRefusal(),
        LatencySlo(),
    )
}
"""Every evaluator by name: the one place they are composed (policy files name them)."""


def run_evaluators(
    names: Iterable[str],
    answer: FinishedAnswer,
    settings: EvalSettings,
    *,
    registry: Mapping[str, Evaluator] = EVALUATORS,
) -> dict[str, Outcome]:
    """Outcome by evaluator name; an unknown name raises KeyError (policies are checked against EVALUATORS first)."""
    return {name: registry[name].evaluate(answer, settings) for name in names}
