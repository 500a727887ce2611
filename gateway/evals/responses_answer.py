"""A Responses API answer seen as evaluators see a chat answer: its text, its function calls, how it ended, and
its request's output format and tools in chat's shape, so every evaluator that reads answer text works on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.evals.answer import FinishedAnswer, ToolCall


def chat_view_of_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """``text.format`` as ``response_format`` and flat function tools as chat tools."""
    view: dict[str, Any] = dict(body)
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if isinstance(fmt, Mapping) and isinstance(fmt.get("type"), str):
        if fmt["type"] == "json_schema":
            schema = {"name": fmt.get("name"), "schema": fmt.get("schema"), "strict": fmt.get("strict")}
            view["response_format"] = {"type": "json_schema", "json_schema": schema}
        else:
            view["response_format"] = {"type": fmt["type"]}
    tools = body.get("tools")
    if isinstance(tools, list):
        view["tools"] = [
            {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}
            if isinstance(tool, Mapping) and tool.get("type") == "function" and "function" not in tool
            else tool
            for tool in tools
        ]
    return view


def answer_from_response(
    request: Mapping[str, Any], body: Mapping[str, Any], *, ttft_s: float | None, total_s: float
) -> FinishedAnswer:
    texts: list[str] = []
    refusal: str | None = None
    calls: list[ToolCall] = []
    for item in body.get("output") or ():
        if not isinstance(item, Mapping):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if (
                    isinstance(part, Mapping)
                    and part.get("type") == "output_text"
                    and isinstance(part.get("text"), str)
                ):
                    texts.append(part["text"])
                elif (
                    isinstance(part, Mapping) and part.get("type") == "refusal" and isinstance(part.get("refusal"), str)
                ):
                    refusal = part["refusal"]
        elif item.get("type") == "function_call":
            name, arguments = item.get("name"), item.get("arguments")
            call_id = item.get("call_id")
            calls.append(
                ToolCall(
                    call_id if isinstance(call_id, str) else None,
                    name if isinstance(name, str) else None,
                    arguments if isinstance(arguments, str) else "",
                )
            )
    details = body.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, Mapping) else None
    finish = "length" if reason == "max_output_tokens" else "tool_calls" if calls else "stop"
    usage = body.get("usage")
    output_tokens = usage.get("output_tokens") if isinstance(usage, Mapping) else None
    return FinishedAnswer(
        request=chat_view_of_request(request),
        content="".join(texts) if texts else None,
        tool_calls=tuple(calls),
        finish_reason=finish,
        refusal=refusal,
        ttft_s=ttft_s,
        total_s=total_s,
        completion_tokens=output_tokens if isinstance(output_tokens, int) else None,
    )
