"""LLM-as-judge (``--judge MODEL``): a rubric scored 1..5 by a model of the policy, through the same backends.

The judge is asked for a JSON object through ``response_format: json_schema`` so its verdict is machine-readable;
a judge that fails (transport error, unparseable verdict) gives ``n/a``, never a failure of the judged model.
``groundedness`` applies to cases with a ``context``, ``helpfulness`` to every case. Judges are noisy, so these two
are reported but required for a verdict only when the promotion settings name them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.evals.answer import FinishedAnswer
from gateway.evals.evaluators import Verdict
from gateway.promote.backends import Endpoint
from gateway.promote.caller import ChatCaller
from gateway.promote.dataset import Case
from gateway.promote.scoring import Scored

JUDGE_EVALUATORS = ("groundedness", "helpfulness")

RUBRIC = """You grade one answer of a customer-support assistant. Score each criterion from 1 (bad) to 5 (excellent).
groundedness: every claim in the answer is supported by the passages given (score 5 when no passages were given and
the answer makes no unsupported factual claims). helpfulness: the answer resolves the user's request correctly,
completely and politely; a correct refusal of a request that must be refused is helpful.
Reply with the JSON object only."""

_VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "groundedness": {"type": "integer", "minimum": 1, "maximum": 5},
        "helpfulness": {"type": "integer", "minimum": 1, "maximum": 5},
        "reason": {"type": "string"},
    },
    "required": ["groundedness", "helpfulness", "reason"],
}


def judge_request(case: Case, answer: FinishedAnswer) -> dict[str, Any]:
    """The chat body sent to the judge about ``answer``."""
    question = "\n".join(
        f"{m.get('role')}: {_text(m.get('content'))}"
        for m in case.body.get("messages", ())
        if m.get("role") != "system"
    )
    passages = "\n".join(f"[{i}] {p}" for i, p in enumerate(case.context, start=1)) or "(none)"
    calls = "; ".join(f"{c.name}({c.arguments})" for c in answer.tool_calls)
    given = (answer.content or "") + (f"\n[tool calls: {calls}]" if calls else "")
    user = f"Conversation:\n{question}\n\nPassages:\n{passages}\n\nAnswer to grade:\n{given}"
    return {
        "messages": [{"role": "system", "content": RUBRIC}, {"role": "user", "content": user}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "grade", "schema": _VERDICT_SCHEMA}},
        "temperature": 0,
        "max_tokens": 256,
    }


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return str(content or "")


async def judge(
    caller: ChatCaller, endpoint: Endpoint, case: Case, answer: FinishedAnswer | None, min_score: int
) -> dict[str, Scored]:
    """The judge's outcomes for ``answer`` (failures when there is no answer to judge)."""
    names = [n for n in JUDGE_EVALUATORS if n != "groundedness" or case.context]
    if answer is None:
        return {name: Scored("fail", "no answer to judge") for name in names}
    reply = await caller.ask(endpoint, judge_request(case, answer))
    if reply.answer is None:
        return {name: Scored("n/a", f"n/a: the judge failed: {reply.error}") for name in names}
    scores = _scores(reply.answer.content)
    outcomes: dict[str, Scored] = {}
    for name in names:
        value = scores.get(name)
        if value is None:
            outcomes[name] = Scored("n/a", "n/a: the judge gave no usable score")
        else:
            verdict: Verdict = "pass" if value >= min_score else "fail"
            outcomes[name] = Scored(verdict, f"judge {endpoint.model}: {value}/5", value / 5)
    return outcomes


def _scores(content: str | None) -> dict[str, int]:
    try:
        parsed = orjson.loads(content or "")
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {
        name: value
        for name, value in parsed.items()
        if name in JUDGE_EVALUATORS and isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5
    }
