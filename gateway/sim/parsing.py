"""Chat and completions bodies parsed into ``GenRequest``, with vLLM's 400s for bodies it would reject.

This stage knows nothing about the served models or their profiles: like vLLM's FastAPI validation it runs
before the model is looked up, so a body that is both malformed and names an unknown model gets the 400.
Token counts are the simulator's own convention: whitespace-split words, plus ``MESSAGE_OVERHEAD`` per chat
message (the chat template's role markers) and the word count of the tool declarations.
"""

from __future__ import annotations

from typing import Any

from gateway.sim import fields
from gateway.sim.conversation import chat_turns, prompt_texts, tool_outcome
from gateway.sim.request import GenRequest, ResponseFormat

MESSAGE_OVERHEAD = 4


def _response_format(body: dict[str, Any]) -> tuple[ResponseFormat, Any]:
    raw = body.get("response_format")
    if raw is None:
        return "text", None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind in ("text", "json_object"):
        return kind, None
    if kind == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, dict):
            raise fields.missing("response_format.json_schema")
        return "json_schema", spec.get("schema", {})
    raise fields.wrong("response_format.type", "'text', 'json_object' or 'json_schema'")


def parse_chat(body: object) -> GenRequest:
    """Validate a ``/v1/chat/completions`` body."""
    body, model, stream, include_usage = fields.common(body)
    messages = body.get("messages")
    if messages is None:
        raise fields.missing("messages")
    if not isinstance(messages, list):
        raise fields.wrong("messages", "a valid list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise fields.missing(f"messages.{i}.role")
    turns = chat_turns(messages)
    prompt_tokens = sum(MESSAGE_OVERHEAD + fields.words(turn.text) for turn in turns)
    tools = fields.chat_tools(body)
    if tools:
        prompt_tokens += fields.word_tokens(body["tools"])
    raw_choice = body.get("tool_choice")
    function = raw_choice.get("function") if isinstance(raw_choice, dict) else None
    named = function.get("name") if isinstance(function, dict) else None
    tool_choice, tool_name = fields.tool_choice(raw_choice, tools, named if isinstance(named, str) else None)
    response_format, schema = _response_format(body)
    return GenRequest(
        api="chat",
        model=model,
        stream=stream,
        include_usage=include_usage,
        max_tokens=fields.max_tokens(body),
        prompt_tokens=prompt_tokens,
        tools=tools,
        tool_choice=tool_choice,
        tool_name=tool_name,
        response_format=response_format,
        schema=schema,
        sampling=fields.sampling(body, chat=True),
        content_keys=(fields.digest(messages),),
        prompt_texts=prompt_texts(turns) if response_format == "json_object" else (),
        tool_outcome=tool_outcome(turns),
    )


def parse_completion(body: object) -> GenRequest:
    """Validate a ``/v1/completions`` body; a prompt may be text, token ids, or a list of either (several
    prompts, each answered with its own ``n`` choices)."""
    body, model, stream, include_usage = fields.common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise fields.missing("prompt")
    prompts = _prompts(prompt)
    if prompts is None:
        raise fields.wrong("prompt", "a string, a list of strings or a list of token ids")
    prompt_tokens = sum(len(p) if isinstance(p, list) else fields.words(p) for p in prompts)
    return GenRequest(
        api="completions",
        model=model,
        stream=stream,
        include_usage=include_usage,
        max_tokens=fields.max_tokens(body, ("max_tokens",)),
        prompt_tokens=prompt_tokens,
        sampling=fields.sampling(body, chat=False),
        content_keys=tuple(fields.digest(p) for p in prompts),
    )


def _is_ids(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value)


def _prompts(prompt: object) -> list[str | list[int]] | None:
    if isinstance(prompt, str) or (_is_ids(prompt) and prompt):
        return [prompt]  # type: ignore[list-item]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or (_is_ids(p) and p) for p in prompt):
        return list(prompt)
    return None
