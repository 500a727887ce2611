"""``POST /v1/responses`` bodies, and the recent responses a later request may continue.

A body parses into a ``ResponsesCall``: the conversation it adds (``instructions`` and ``input``, a string or
items: messages, ``function_call``, ``function_call_output``), its function tools, ``tool_choice`` and
``text.format``, and the request fields the answer echoes. ``previous_response_id`` is resolved against the
``ResponseStore`` once the model is known (vLLM's order), giving the ``GenRequest``: the earlier conversation,
its answer included, comes first, so a ``function_call`` answered in an earlier response and a
``function_call_output`` in this one end the tool loop.

The simulator keeps responses as vLLM does with ``VLLM_ENABLE_RESPONSES_API_STORE=1`` (``store: false`` keeps
none), but bounded: the oldest are forgotten past ``MAX_STORED`` responses or ``MAX_STORED_BYTES``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from gateway.sim import fields
from gateway.sim.conversation import Turn, prompt_texts, response_turns, tool_outcome
from gateway.sim.errors import response_not_found
from gateway.sim.parsing import MESSAGE_OVERHEAD
from gateway.sim.request import GenRequest, ResponseFormat, Sampling, Tool, ToolChoice

MAX_STORED = 1024
MAX_STORED_BYTES = 32 * 1024 * 1024
LOGPROBS_INCLUDE = "message.output_text.logprobs"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A finished response: its body (for ``GET``) and its whole conversation (for continuing it)."""

    body: bytes
    turns: tuple[Turn, ...]
    size: int


class ResponseStore:
    """Recent responses by id, oldest forgotten first; only touched from the event loop."""

    def __init__(self, max_items: int = MAX_STORED, max_bytes: int = MAX_STORED_BYTES) -> None:
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._bytes = 0

    def get(self, response_id: str) -> StoredResponse | None:
        return self._items.get(response_id)

    def put(self, response_id: str, body: bytes, turns: tuple[Turn, ...]) -> None:
        size = len(body) + sum(len(t.text) + sum(len(r) for r in t.result or ()) for t in turns)
        if size > self._max_bytes:
            return
        self._items[response_id] = StoredResponse(body, turns, size)
        self._bytes += size
        while len(self._items) > self._max_items or self._bytes > self._max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.size

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class ResponsesCall:
    """A parsed ``/v1/responses`` body, before its ``previous_response_id`` is resolved."""

    model: str | None
    stream: bool
    store: bool
    instructions: str | None
    turns: tuple[Turn, ...]
    tools: tuple[Tool, ...]
    tool_choice: Any
    response_format: ResponseFormat
    schema: Any
    max_output_tokens: int | None
    previous_response_id: str | None
    sampling: Sampling
    content_key: str
    declarations_tokens: int
    echo: dict[str, Any] = field(default_factory=dict)
    """Request fields the response object repeats (``tools``, ``text``, ``metadata``, ...)."""

    def request(self, store: ResponseStore) -> tuple[GenRequest, tuple[Turn, ...]]:
        """The generation request, earlier conversation included; a 404 for an unknown previous response."""
        earlier: tuple[Turn, ...] = ()
        if self.previous_response_id is not None:
            previous = store.get(self.previous_response_id)
            if previous is None:
                raise response_not_found(self.previous_response_id)
            earlier = previous.turns
        turns = [*earlier, *self.turns]
        prompt_tokens = sum(MESSAGE_OVERHEAD + fields.words(t.text) for t in turns) + self.declarations_tokens
        if self.instructions:
            prompt_tokens += MESSAGE_OVERHEAD + fields.words(self.instructions)
        choice, name = _tool_choice(self.tool_choice, self.tools)
        gen = GenRequest(
            api="responses",
            model=self.model,
            stream=self.stream,
            include_usage=True,
            max_tokens=self.max_output_tokens,
            prompt_tokens=prompt_tokens,
            tools=self.tools,
            tool_choice=choice,
            tool_name=name,
            response_format=self.response_format,
            schema=self.schema,
            sampling=self.sampling,
            content_keys=(self.content_key,),
            prompt_texts=prompt_texts(turns, self.instructions or "") if self.response_format == "json_object" else (),
            tool_outcome=tool_outcome(turns),
        )
        return gen, tuple(turns)


def parse_responses(body: object) -> ResponsesCall:
    """Validate a ``/v1/responses`` body (vLLM's 400s for what it would reject)."""
    body, model, stream, _ = fields.common(body)
    raw_input = body.get("input")
    if raw_input is None:
        raise fields.missing("input")
    turns = _input_turns(raw_input)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise fields.wrong("instructions", "a valid string")
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise fields.wrong("previous_response_id", "a valid string")
    store = body.get("store", True)
    include = body.get("include") or []
    if not isinstance(include, list):
        raise fields.wrong("include", "a valid list")
    tools = _tools(body.get("tools"))
    _tool_choice(body.get("tool_choice"), tools)
    response_format, schema = _text_format(body.get("text"))
    logprobs = LOGPROBS_INCLUDE in include
    top = body.get("top_logprobs") if logprobs else None
    base = fields.sampling({**body, "n": None, "logprobs": logprobs or None, "top_logprobs": top}, chat=True)
    temperature = body.get("temperature")
    echo = {
        "instructions": instructions,
        "metadata": body.get("metadata"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": 1.0 if temperature is None else temperature,
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_p": 1.0 if body.get("top_p") is None else body["top_p"],
        "max_tool_calls": body.get("max_tool_calls"),
        "previous_response_id": previous,
        "reasoning": body.get("reasoning"),
        "service_tier": body.get("service_tier") or "auto",
        "text": body.get("text"),
        "top_logprobs": base.top_logprobs if logprobs else None,
        "truncation": body.get("truncation") or "disabled",
        "user": body.get("user"),
    }
    return ResponsesCall(
        model=model,
        stream=stream,
        store=store is not False,
        instructions=instructions,
        turns=tuple(turns),
        tools=tools,
        tool_choice=body.get("tool_choice"),
        response_format=response_format,
        schema=schema,
        max_output_tokens=fields.max_tokens(body, ("max_output_tokens",)),
        previous_response_id=previous,
        sampling=base,
        content_key=fields.digest([instructions, raw_input, previous]),
        declarations_tokens=fields.word_tokens(body["tools"]) if tools else 0,
        echo=echo,
    )


def _input_turns(raw: object) -> list[Turn]:
    if isinstance(raw, str):
        return [Turn("user", raw)]
    if not isinstance(raw, list):
        raise fields.wrong("input", "a valid string or a list of input items")
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise fields.wrong(f"input.{i}", "a valid dictionary")
        if item.get("type", "message") == "message" and not isinstance(item.get("role"), str):
            raise fields.missing(f"input.{i}.role")
    return response_turns(raw)


def _tools(raw: object) -> tuple[Tool, ...]:
    """Function tools (``{"type": "function", "name", "parameters"}``); built-in tool types are not called."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise fields.wrong("tools", "a valid list")
    tools = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise fields.missing(f"tools.{i}.type")
        if item["type"] != "function":
            continue
        if not isinstance(item.get("name"), str):
            raise fields.missing(f"tools.{i}.name")
        parameters = item.get("parameters")
        tools.append(Tool(item["name"], parameters if isinstance(parameters, dict) else {}))
    return tuple(tools)


def _tool_choice(raw: object, tools: tuple[Tool, ...]) -> tuple[ToolChoice, str | None]:
    """As chat's, except that ``auto`` (vLLM's default here) without function tools is simply no tool use."""
    if not tools and raw in (None, "auto", "none"):
        return "none", None
    named = raw.get("name") if isinstance(raw, dict) and raw.get("type") == "function" else None
    return fields.tool_choice(raw, tools, named if isinstance(named, str) else None)


def _text_format(raw: object) -> tuple[ResponseFormat, Any]:
    if raw is None:
        return "text", None
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt is None:
        return "text", None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        return kind, None
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise fields.missing("text.format.schema")
        return "json_schema", schema
    raise fields.wrong("text.format.type", "'text', 'json_object' or 'json_schema'")
