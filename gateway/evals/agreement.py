"""Agreement between a shadow answer and the primary answer to the same request.

Four checks, each ``agree``/``disagree`` or skipped when it does not apply: both valid JSON or both invalid (JSON was
requested), the same set of tool names (tools were offered), the same finish-reason class, and content lengths
within a ratio. They answer "would users have noticed a difference?" cheaply, without an LLM judge.
"""

from __future__ import annotations

import orjson

from gateway.evals.answer import FinishedAnswer

LENGTH_RATIO_BOUNDS = (0.5, 2.0)


def _json_ok(answer: FinishedAnswer) -> bool:
    try:
        orjson.loads(answer.content or "")
    except orjson.JSONDecodeError:
        return False
    return True


def _finish_class(answer: FinishedAnswer) -> str:
    reason = answer.finish_reason or "none"
    return reason if reason in ("stop", "length", "tool_calls") else "other"


def compare(primary: FinishedAnswer, shadow: FinishedAnswer) -> dict[str, bool]:
    """Check name → agreed, for the checks that apply to this request."""
    request = primary.request
    result: dict[str, bool] = {}
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        result["json_valid"] = _json_ok(primary) == _json_ok(shadow)
    tools = request.get("tools")
    if isinstance(tools, list) and tools:
        result["tool_choice"] = {c.name for c in primary.tool_calls} == {c.name for c in shadow.tool_calls}
    result["finish_reason"] = _finish_class(primary) == _finish_class(shadow)
    a, b = len(primary.content or ""), len(shadow.content or "")
    if a or b:
        low, high = LENGTH_RATIO_BOUNDS
        result["length_ratio"] = min(a, b) > 0 and low <= b / a <= high
    return result
