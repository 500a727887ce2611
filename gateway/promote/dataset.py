"""The eval dataset: JSONL, one case a line, read into typed :class:`Case` objects or refused with a line number.

Nothing is skipped silently: a line that is not JSON, has an unknown key, a wrong type (validation is strict:
``"refusal": "no"`` is not coerced to false), or names a cohort the policy does not have stops the run with
``FILE:LINE: message`` (exit 2), so a typo in ``expect`` can never turn a check off. Blank lines and lines starting
with ``#`` are allowed, for readability.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.policy.checks import did_you_mean


class DatasetError(Exception):
    """A dataset that must not be used; ``str()`` is ``FILE:LINE: message``."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Expect(_Strict):
    """What a right answer looks like; every key given must hold for ``task_completion`` to pass."""

    contains: str | list[str] | None = Field(default=None, description="substrings (case-insensitive), all needed")
    regex: str | None = Field(default=None, description="Python re.search over the content")
    equals: Any = Field(default=None, description="the content, stripped; or, not a string, the parsed JSON")
    json_schema: dict[str, Any] | None = None
    tool_name: str | None = None
    tool_args: dict[str, Any] | None = Field(default=None, description="a subset of the call's arguments")
    refusal: bool | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from None
        return value

    @property
    def substrings(self) -> tuple[str, ...]:
        if self.contains is None:
            return ()
        return (self.contains,) if isinstance(self.contains, str) else tuple(self.contains)

    @property
    def has_equals(self) -> bool:
        return "equals" in self.model_fields_set

    @property
    def empty(self) -> bool:
        """No expectation at all: ``task_completion`` does not apply."""
        given = (self.regex, self.json_schema, self.tool_name, self.tool_args, self.refusal)
        return not self.substrings and not self.has_equals and all(value is None for value in given)


class _Line(_Strict):
    """One dataset line as written; turned into a :class:`Case` once valid."""

    id: str | None = None
    cohort: str = Field(min_length=1)
    messages: list[dict[str, Any]] | None = Field(default=None, min_length=1)
    prompt: str | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, min_length=1)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    context: str | list[str] | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    expect: Expect = Expect()

    @model_validator(mode="after")
    def _one_input(self) -> _Line:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a case needs exactly one of 'messages' or 'prompt'")
        for i, message in enumerate(self.messages or ()):
            if not isinstance(message.get("role"), str):
                raise ValueError(f"messages[{i}] needs a 'role'")
        kind = (self.response_format or {}).get("type", "text")
        if kind not in ("text", "json_object", "json_schema"):
            raise ValueError("response_format.type must be text, json_object or json_schema")
        return self


@dataclass(frozen=True)
class LiveAnswer:
    """What a captured request got from the gateway live (the capture's ``answer``): the captured-case evaluators
    read it to decide whether they apply. ``refused`` and ``finish_reason`` are None when no answer was captured."""

    refused: bool | None
    finish_reason: str | None
    model: str | None


@dataclass(frozen=True)
class Case:
    """One case, ready to send: ``body`` is the chat-completions request without ``model`` (the same for all).

    ``captured`` is set for a case read from a traffic capture (gateway.promote.captured), None for a written one.
    """

    id: str
    line: int
    cohort: str
    body: Mapping[str, Any]
    context: tuple[str, ...]
    expect: Expect
    captured: LiveAnswer | None = None


def load_dataset(path: str | Path, cohorts: Iterable[str]) -> list[Case]:
    """Every case of ``path``, in file order; raises :class:`DatasetError` on the first bad line or an empty file."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(name, 0, f"cannot read the dataset: {exc}") from None
    known = list(cohorts)
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        case = _parse_line(name, number, raw, known)
        if case.id in seen:
            raise DatasetError(name, number, f"duplicate id '{case.id}' (first on line {seen[case.id]})")
        seen[case.id] = number
        cases.append(case)
    if not cases:
        raise DatasetError(name, 0, "the dataset has no cases")
    return cases


def _parse_line(name: str, number: int, raw: str, cohorts: list[str]) -> Case:
    line = parse_strict_line(_Line, name, number, raw, cohorts, DatasetError, "a case is a JSON object")
    return _case(line, number)


StrictLine = TypeVar("StrictLine", bound=BaseModel)


def parse_strict_line(
    model: type[StrictLine],
    name: str,
    number: int,
    raw: str,
    cohorts: list[str],
    error: type[DatasetError],
    not_object: str,
) -> StrictLine:
    """One JSONL line validated strictly as ``model``, whose ``cohort`` must be one of ``cohorts``; any problem
    raises ``error`` as ``FILE:LINE: message`` (shared by the eval dataset and the calibration set)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise error(name, number, f"not a JSON line: {exc}") from None
    if not isinstance(data, dict):
        raise error(name, number, not_object)
    try:
        line = model.model_validate(data)
    except ValidationError as exc:
        raise error(name, number, _first_error(exc)) from None
    cohort = getattr(line, "cohort", None)
    if cohort not in cohorts:
        hint = did_you_mean(str(cohort), cohorts)
        raise error(name, number, f"cohort: unknown cohort '{cohort}'{hint}")
    return line


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "missing required key"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _case(line: _Line, number: int) -> Case:
    context = (line.context,) if isinstance(line.context, str) else tuple(line.context or ())
    messages = list(line.messages) if line.messages is not None else [{"role": "user", "content": line.prompt}]
    if context:
        # Retrieved passages go to the model as a system message, numbered, ahead of the conversation.
        passages = "\n\n".join(f"[{i}] {text}" for i, text in enumerate(context, start=1))
        messages.insert(0, {"role": "system", "content": f"Answer from these passages:\n\n{passages}"})
    body: dict[str, Any] = {"messages": messages}
    optional = {
        "tools": line.tools,
        "tool_choice": line.tool_choice,
        "response_format": line.response_format,
        "max_tokens": line.max_tokens,
        "temperature": line.temperature,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    return Case(line.id or f"line-{number}", number, line.cohort, body, context, line.expect)
