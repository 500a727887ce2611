"""Offline evaluators: score one model's answer to one case, registered by name in :data:`CASE_EVALUATORS`.

They differ from the online evaluators in one way that matters for a fair comparison: whether an evaluator
*applies* is decided by the case alone (``applies``), never by the answer, so every model is judged on the same set
of cases. An answer that never came (transport failure after retries) fails every evaluator that applies.
Where an online evaluator already does the job (``json_valid``, ``json_schema``, ``tool_call_valid``,
refusal detection) it is reused, so offline and online results mean the same thing and can be pushed into the
gateway's eval windows under the same names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.evals.agreement import compare
from gateway.evals.answer import FinishedAnswer, ToolCall
from gateway.evals.evaluators import EVALUATORS, EvalSettings, Verdict
from gateway.evals.schemas import SchemaCache
from gateway.promote.dataset import Case
from gateway.promote.grounding import overlap

_ONLINE_SETTINGS = EvalSettings()


@dataclass(frozen=True, slots=True)
class Scored:
    """An evaluator's verdict on one answer; ``score`` in [0, 1] where the evaluator measures a degree."""

    verdict: Verdict
    reason: str
    score: float | None = None


@dataclass(frozen=True)
class ScoringSettings:
    groundedness_min: float = 0.5
    """``groundedness_overlap`` passes when at least this share of the answer's content words is in the context."""


class CaseEvaluator(Protocol):
    name: str

    def applies(self, case: Case) -> bool: ...

    def evaluate(self, case: Case, answer: FinishedAnswer, settings: ScoringSettings) -> Scored: ...


def _response_type(case: Case) -> str:
    response_format = case.body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    return kind if isinstance(kind, str) else "text"


def _online(name: str, answer: FinishedAnswer) -> Scored:
    outcome = EVALUATORS[name].evaluate(answer, _ONLINE_SETTINGS)
    return Scored(outcome.verdict, outcome.reason)


def is_refusal(answer: FinishedAnswer) -> bool:
    """The backend set ``refusal`` or the content opens like a refusal (the online ``no_refusal`` patterns)."""
    return EVALUATORS["no_refusal"].evaluate(answer, _ONLINE_SETTINGS).verdict == "fail"


class JsonValidCase:
    name = "json_valid"

    def applies(self, case: Case) -> bool:
        return _response_type(case) in ("json_object", "json_schema")

    def evaluate(self, case: Case, answer: FinishedAnswer, settings: ScoringSettings) -> Scored:
        return _online("json_valid", answer)


class JsonSchemaCase:
    """The requested ``json_schema`` response format, or the case's ``expect.json_schema`` when it has one."""

    name = "json_schema"

    def __init__(self, schemas: SchemaCache) -> None:
        self._schemas = schemas

    def applies(self, case: Case) -> bool:
        return case.expect.json_schema is not None or _response_type(case) == "json_schema"

    def evaluate(self, case: Case, answer: FinishedAnswer, settings: ScoringSettings) -> Scored:
        if case.expect.json_schema is None:
            return _online("json_schema", answer)
        return _schema_check(self._schemas, case.expect.json_schema, answer.content)


def _schema_check(schemas: SchemaCache, schema: Mapping[str, Any], content: str | None) -> Scored:
    if content is None:
        return Scored("fail", "no content to validate")
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        return Scored("fail", f"content is not valid JSON: {exc}")
    error, schema_error = schemas.first_error(schema, value)
    if schema_error is not None:
        return Scored("n/a", f"n/a: the expected schema cannot be applied: {schema_error}")
    if error is not None:
        return Scored("fail", f"content does not match the expected schema at {error}")
    return Scored("pass", "content matches the expected schema")


class ToolCallValidCase:
    name = "tool_call_valid"

    def applies(self, case: Case) -> bool:
        return bool(case.body.get("tools"))

    def evaluate(self, case: Case, answer: FinishedAnswer, settings: ScoringSettings) -> Scored:
        return _online("tool_call_valid", answer)


class NotTruncatedCase:
    """Captured cases only (a written case sets its own ``max_tokens`` and expectations): not cut at the token
    limit, the online ``not_truncated``."""

    name = "not_truncated"

    def applies(self, case: Case) -> bool:
        return case.captured is not None

    def evaluate(self, case: Case, answer: FinishedAnswer, settings: ScoringSettings) -> Scored:
        return _online("not_truncated", answer)


class NoRefusalCase:
    """Captured cases the live model answered without refusing (one it refused may rightly be refused again)."""

    name = "no_refusal"

    def applies(self, case: Case) -> bool:
        return case.captured is not None and case.captured.refused is False

    def evaluate(self, case: Case, answer: FinishedAnswer, settings: ScoringSettings) -> Scored:
        return _online("no_refusal", answer)


class ToolSelection:
    """The expected tool was called with valid arguments that include ``expect.tool_args``."""

    name = "tool_selection"

    def applies(self, case: Case) -> bool:
        return case.expect.tool_name is not None or case.expect.tool_args is not None

    def evaluate(self, case: Case, answer: FinishedAnswer, settings: ScoringSettings) -> Scored:
        valid = _online("tool_call_valid", answer)
        if valid.verdict == "fail":
            return valid
        problem = tool_problem(case, answer.tool_calls)
        return Scored("fail", problem) if problem else Scored("pass", "the expected tool call")


def tool_problem(case: Case, calls: tuple[ToolCall, ...]) -> str | None:
    """Why no call matches ``expect.tool_name``/``tool_args``, or None when one does."""
    wanted, args = case.expect.tool_name, case.expect.tool_args
    if not calls:
        return f"expected a call of {wanted or 'a tool'}, got no tool call"
    named = [call for call in calls if wanted is None or call.name == wanted]
    if not named:
        return f"expected a call of {wanted}, got {', '.join(str(call.name) for call in calls)}"
    if args is None:
        return None
    for call in named:
        try:
            given = orjson.loads(call.arguments)
        except orjson.JSONDecodeError:
            continue
        if isinstance(given, dict) and is_subset(args, given):
            return None
    return f"no call of {named[0].name} has arguments including {orjson.dumps(args).decode()[:120]}"


def is_subset(expected: Any, given: Any) -> bool:
    """``expected`` is contained in ``given``: objects by key (recursively), everything else by equality."""
    if isinstance(expected, dict):
        return isinstance(given, dict) and all(k in given and is_subset(v, given[k]) for k, v in expected.items())
    return bool(expected == given)


class RefusalCorrect:
    name = "refusal_correct"

    def applies(self, case: Case) -> bool:
        return case.expect.refusal is not None

    def evaluate(self, case: Case, answer: FinishedAnswer, settings: ScoringSettings) -> Scored:
        refused = is_refusal(answer)
        if refused == case.expect.refusal:
            return Scored("pass", "refused, as expected" if refused else "answered, as expected")
        return Scored("fail", "refused a case it should answer" if refused else "answered a case it should refuse")


class GroundednessOverlap:
    """A lexical proxy, not a judge: the share of the answer's content words that occur in the case's context."""

    name = "groundedness_overlap"

    def applies(self, case: Case) -> bool:
        return bool(case.context)

    def evaluate(self, case: Case, answer: FinishedAnswer, settings: ScoringSettings) -> Scored:
        if answer.tool_calls and not (answer.content or "").strip():
            return Scored("n/a", "n/a: answered with a tool call")
        share, words = overlap(answer.content or "", case.context)
        if words == 0:
            return Scored("fail", "no content words to ground", 0.0)
        verdict: Verdict = "pass" if share >= settings.groundedness_min else "fail"
        return Scored(verdict, f"{share:.0%} of {words} content words are in the context", share)


class TaskCompletion:
    """Every expectation of the case holds (the expectations of the other evaluators included)."""

    name = "task_completion"

    def __init__(self, schemas: SchemaCache) -> None:
        self._schemas = schemas

    def applies(self, case: Case) -> bool:
        return not case.expect.empty

    def evaluate(self, case: Case, answer: FinishedAnswer, settings: ScoringSettings) -> Scored:
        expect, content = case.expect, answer.content or ""
        for needle in expect.substrings:
            if needle.lower() not in content.lower():
                return Scored("fail", f"content lacks {needle!r}")
        if expect.regex is not None and not re.search(expect.regex, content):
            return Scored("fail", f"content does not match /{expect.regex}/")
        if expect.has_equals and not _equals(expect.equals, content):
            return Scored("fail", "content differs from the expected answer")
        if expect.json_schema is not None:
            checked = _schema_check(self._schemas, expect.json_schema, answer.content)
            if checked.verdict == "fail":
                return checked
        if expect.tool_name is not None or expect.tool_args is not None:
            problem = tool_problem(case, answer.tool_calls)
            if problem:
                return Scored("fail", problem)
        if expect.refusal is not None and is_refusal(answer) != expect.refusal:
            return Scored("fail", "refused" if expect.refusal is False else "did not refuse")
        return Scored("pass", "every expectation holds")


def _equals(expected: Any, content: str) -> bool:
    if isinstance(expected, str):
        return content.strip() == expected.strip()
    try:
        return bool(orjson.loads(content) == expected)
    except orjson.JSONDecodeError:
        return False


_SCHEMAS = SchemaCache()
CASE_EVALUATORS: dict[str, CaseEvaluator] = {
    evaluator.name: evaluator
    for evaluator in (
        TaskCompletion(_SCHEMAS),
        JsonValidCase(),
        JsonSchemaCase(_SCHEMAS),
        ToolCallValidCase(),
        ToolSelection(),
        RefusalCorrect(),
        GroundednessOverlap(),
        NotTruncatedCase(),
        NoRefusalCase(),
    )
}
"""The deterministic offline evaluators by name; the judge's (``groundedness``, ``helpfulness``) are in judge.py."""

AGREEMENT = "agreement"
REPORTED_ONLY: frozenset[str] = frozenset({AGREEMENT})
"""Evaluators that are reported but never required by default and never compared with the baselines.

``agreement`` measures closeness to one reference model's answers, and the reference itself has no outcome: a
baseline cannot be "better" at agreeing with itself, so a candidate-minus-baseline difference means nothing.
"""


def agreement(reference: str, theirs: FinishedAnswer | None, mine: FinishedAnswer | None, error: str | None) -> Scored:
    """``mine`` against the ``reference`` model's answer to the same case and repeat (gateway.evals.agreement):
    passes when every check that applies agrees. No reference answer: ``n/a``, it says nothing about this model."""
    if theirs is None:
        return Scored("n/a", f"n/a: {reference} gave no answer to compare with")
    if mine is None:
        return Scored("fail", f"no answer: {error}")
    checks = compare(theirs, mine)
    differ = [check for check, agreed in checks.items() if not agreed]
    share = (len(checks) - len(differ)) / len(checks) if checks else 1.0
    if differ:
        return Scored("fail", f"differs from {reference} on {', '.join(differ)}", share)
    return Scored("pass", f"agrees with {reference} on {', '.join(checks)}", share)


def score(case: Case, answer: FinishedAnswer | None, error: str | None, settings: ScoringSettings) -> dict[str, Scored]:
    """Outcome by evaluator name, for the evaluators that apply to ``case``."""
    outcomes: dict[str, Scored] = {}
    for name, evaluator in CASE_EVALUATORS.items():
        if not evaluator.applies(case):
            continue
        if answer is None:
            outcomes[name] = Scored("fail", f"no answer: {error}")
        else:
            outcomes[name] = evaluator.evaluate(case, answer, settings)
    return outcomes
