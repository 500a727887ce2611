"""FinishedAnswer: one answer as the evaluators see it, whatever the wire format it came in.

Evaluators judge a FinishedAnswer, never raw bodies or SSE chunks, so each is written once for chat and completions,
streamed or not. Only the first choice is kept (index 0 when streaming). Parsing is forgiving on purpose: a
malformed body or chunk yields less information (None, empty), never an exception, because evaluation runs after
the client already has its answer and must not be able to break the request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call as the backend sent it; ``arguments`` is the raw JSON text, not parsed."""

    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class FinishedAnswer:
    """What one request got back. Times are in seconds; ``ttft_s`` is None when unknown (non-streamed answers)."""

    request: Mapping[str, Any]
    content: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str | None
    refusal: str | None
    ttft_s: float | None
    total_s: float
    completion_tokens: int | None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _completion_tokens(body: Mapping[str, Any]) -> int | None:
    usage = body.get("usage")
    return _int(usage.get("completion_tokens")) if isinstance(usage, Mapping) else None


def _tool_calls(raw: Any) -> tuple[ToolCall, ...]:
    if not isinstance(raw, list):
        return ()
    calls = []
    for call in raw:
        if not isinstance(call, Mapping):
            continue
        function = call.get("function")
        if not isinstance(function, Mapping):
            function = {}
        calls.append(ToolCall(_str(call.get("id")), _str(function.get("name")), _str(function.get("arguments")) or ""))
    return tuple(calls)


def answer_from_json(
    request: Mapping[str, Any], body: Mapping[str, Any], *, ttft_s: float | None, total_s: float
) -> FinishedAnswer:
    """The answer in a non-streamed ``chat.completion`` or ``text_completion`` body (its first choice)."""
    if not isinstance(body, Mapping):
        body = {}
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}
    message = choice.get("message")
    if isinstance(message, Mapping):
        content, refusal = _str(message.get("content")), _str(message.get("refusal"))
        calls = _tool_calls(message.get("tool_calls"))
    else:
        content, refusal, calls = _str(choice.get("text")), None, ()
    return FinishedAnswer(
        request=request,
        content=content,
        tool_calls=calls,
        finish_reason=_str(choice.get("finish_reason")),
        refusal=refusal,
        ttft_s=ttft_s,
        total_s=total_s,
        completion_tokens=_completion_tokens(body),
    )


class _CallParts:
    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.arguments: list[str] = []


class StreamAssembler:
    """Builds one FinishedAnswer from the parsed SSE chunks of a stream (chat or completions), fed in order.

    ``add`` runs once per chunk on the hot path, so it only appends fragments; joining happens in ``finish``.
    Tool-call deltas are merged by ``index``: id and name come from the first delta that carries them, argument
    fragments are concatenated. A delta without an index continues the last call, unless it brings a new id.
    """

    __slots__ = ("_calls", "_completion_tokens", "_content", "_finish_reason", "_last_index", "_refusal")

    def __init__(self) -> None:
        self._content: list[str] = []
        self._refusal: list[str] = []
        self._calls: dict[int, _CallParts] = {}
        self._last_index = 0
        self._finish_reason: str | None = None
        self._completion_tokens: int | None = None

    def add(self, chunk: Mapping[str, Any]) -> None:
        if not isinstance(chunk, Mapping):
            return
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            tokens = _int(usage.get("completion_tokens"))
            if tokens is not None:
                self._completion_tokens = tokens
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
                    self._add_choice(choice)

    def _add_choice(self, choice: Mapping[str, Any]) -> None:
        finish_reason = choice.get("finish_reason")
        if isinstance(finish_reason, str):
            self._finish_reason = finish_reason
        delta = choice.get("delta")
        if not isinstance(delta, Mapping):
            text = choice.get("text")
            if isinstance(text, str):
                self._content.append(text)
            return
        content, refusal, calls = delta.get("content"), delta.get("refusal"), delta.get("tool_calls")
        if isinstance(content, str):
            self._content.append(content)
        if isinstance(refusal, str):
            self._refusal.append(refusal)
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, Mapping):
                    self._add_call(call)

    def _add_call(self, delta: Mapping[str, Any]) -> None:
        index = _int(delta.get("index"))
        if index is None:
            index = max(self._calls, default=-1) + 1 if delta.get("id") is not None else self._last_index
        self._last_index = index
        parts = self._calls.get(index)
        if parts is None:
            parts = self._calls[index] = _CallParts()
        if parts.id is None:
            parts.id = _str(delta.get("id"))
        function = delta.get("function")
        if isinstance(function, Mapping):
            if parts.name is None:
                parts.name = _str(function.get("name"))
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                parts.arguments.append(arguments)

    def finish(self, request: Mapping[str, Any], *, ttft_s: float | None, total_s: float) -> FinishedAnswer:
        """The answer so far; may be called more than once (it does not consume the assembler)."""
        calls = tuple(ToolCall(p.id, p.name, "".join(p.arguments)) for _, p in sorted(self._calls.items()))
        return FinishedAnswer(
            request=request,
            content="".join(self._content) if self._content else None,
            tool_calls=calls,
            finish_reason=self._finish_reason,
            refusal="".join(self._refusal) if self._refusal else None,
            ttft_s=ttft_s,
            total_s=total_s,
            completion_tokens=self._completion_tokens,
        )
