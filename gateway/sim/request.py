"""What the simulator needs from a generation request, whichever API it came through.

Chat completions, completions and the Responses API all parse into one ``GenRequest``, so limits, fault rolls
and answer planning are written once. Nothing here knows about profiles or served models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Api = Literal["chat", "completions", "responses"]
ToolChoice = Literal["none", "auto", "required", "named"]
ResponseFormat = Literal["text", "json_object", "json_schema"]

MAX_N = 128
"""Most choices one request may ask for (vLLM has no cap; bounded work here)."""
MAX_LOGPROBS = 20
"""vLLM's default ``--max-logprobs``: ``top_logprobs``/``logprobs`` above it is a 400."""
MAX_STOP_STRINGS = 256


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """Tool results the conversation already holds for the model's latest calls (its agent loop's last turn).

    ``results`` pairs each answered tool's name with the result text; ``called`` names every tool called since
    the last user turn, so ``tool_choice: required`` can move on to a tool not called yet.
    """

    results: tuple[tuple[str, str], ...]
    called: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling controls a client relies on.

    ``n`` choices per prompt; text is cut before the first of ``stop``; ``seed`` makes the content a function of
    the request's content; ``logprobs`` asks for per-token log probabilities with ``top_logprobs`` alternatives
    each (completions' ``logprobs: k`` is ``logprobs=True, top_logprobs=k``).
    """

    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True, slots=True)
class GenRequest:
    """A validated generation request.

    ``content_keys`` has one digest per prompt (completions may send several; the others one), used to seed
    content when the request has a ``seed``. ``prompt_texts`` are the system/user texts searched for a JSON
    Schema when the answer must be a JSON object. ``tool_outcome`` is set when the latest tool calls have been
    answered, so an ``auto`` tool choice answers with text.
    """

    api: Api
    model: str | None
    stream: bool
    include_usage: bool
    max_tokens: int | None
    prompt_tokens: int
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = "none"
    tool_name: str | None = None
    response_format: ResponseFormat = "text"
    schema: Any = None
    sampling: Sampling = field(default_factory=Sampling)
    content_keys: tuple[str, ...] = ("",)
    prompt_texts: tuple[str, ...] = ()
    tool_outcome: ToolOutcome | None = None

    @property
    def chat(self) -> bool:
        """Chat-style answers (chat completions and Responses): no leading space, context-long default length."""
        return self.api != "completions"
