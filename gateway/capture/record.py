"""Capture records (docs/capture.md): what the event loop hands over, and the JSON object the writer makes of it.

At the end of a request the loop does the cheap part only: the outcome's scalars (a dozen attribute reads) and
references to the body, the headers and the finished answer, which nothing changes once the request is over (the
transport sends a copy of the body; relaying rewrites the backend's chunks, never the client's body). The routing
features (``prompt_chars`` walks the messages), the header selection, redaction and serialization run in the
writer thread, off the loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.capture.redact import Redactor
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.evals.answer import FinishedAnswer
from gateway.policy.checks import CREDENTIAL_HEADERS
from gateway.policy.schema import CaptureContent, Match, PolicySpec
from gateway.routing.features import RequestFeatures

VERSION = 1


@dataclass(frozen=True, slots=True)
class Pending:
    """One record as the loop offers it to a sink; :func:`render` makes the JSON object of it."""

    kind: Literal["primary", "shadow"]
    time: float
    request_id: str
    instance: str
    policy_version: str
    endpoint: str
    content: CaptureContent
    redactor: Redactor
    body: Mapping[str, Any]
    headers: Mapping[str, str]  # every request header (lower-cased); only ``kept_headers`` are written
    kept_headers: tuple[str, ...]
    api_key: str | None  # the key's name in the policy
    outcome: dict[str, Any]
    answer: FinishedAnswer | None = None
    shadow: dict[str, Any] | None = None


def kept_headers(policy: PolicySpec) -> tuple[str, ...]:
    """Lower-cased names of the headers routing reads (header matchers at any depth, rollout ``sticky:
    header:NAME``) and those ``capture.headers`` adds; never a credential."""
    names: list[str] = []

    def walk(match: Match | None) -> None:
        if match is None:
            return
        names.extend(match.header or ())
        for child in (*(match.any or ()), *(match.all or ())):
            walk(child)
        walk(match.not_)

    for cohort in policy.cohorts:
        walk(cohort.match)
    for route in policy.routes.values():
        if route.rollout is not None and route.rollout.sticky.startswith("header:"):
            names.append(route.rollout.sticky.removeprefix("header:"))
    if policy.capture is not None:
        names.extend(policy.capture.headers)
    unique = dict.fromkeys(name.lower() for name in names)
    return tuple(name for name in unique if name not in CREDENTIAL_HEADERS)


def error_code(error: GatewayError) -> str:
    """The ``code`` of the error body the client got, else its ``type``."""
    detail = error.body().get("error")
    code = detail.get("code") if isinstance(detail, dict) else None
    return code if isinstance(code, str) and code else error.type


def plan_outcome(ctx: RequestContext) -> dict[str, Any]:
    """What classification and planning decided; nulls when the request failed before them."""
    decision, plan = ctx.decision, ctx.plan
    rollout = None
    if plan is not None and plan.rollout_candidate is not None:
        rollout = {"candidate": plan.rollout_candidate, "weight": plan.rollout_weight}
    return {
        "cohort": decision.cohort if decision is not None else None,
        "rule": decision.rule if decision is not None else None,
        "route": plan.route if plan is not None else None,
        "primary": (plan.primary or None) if plan is not None else None,
        "split_u": plan.split_u if plan is not None else None,
        "rollout": rollout,
        "pinned": plan.pinned if plan is not None else False,
    }


def primary_outcome(ctx: RequestContext, error: GatewayError | None, now: float) -> dict[str, Any]:
    """The outcome of a finished request (``now``: ``time.perf_counter()`` at its end)."""
    usage = ctx.usage
    failure = error_code(error) if error is not None else "stream_error" if ctx.stream_error else None
    return {
        **plan_outcome(ctx),
        "model": ctx.answered_by,
        "attempts": list(dict.fromkeys(a.model for a in ctx.attempts)),
        "fallback": ctx.fallback,
        "status": ctx.status,
        "error": failure,
        "usage": _usage(usage.prompt_tokens, usage.completion_tokens) if usage is not None else None,
        "latency_s": round(now - ctx.started, 6),
        "ttft_s": round(ctx.first_byte_at - ctx.started, 6) if ctx.first_byte_at is not None else None,
    }


def shadow_outcome(
    origin: RequestContext,
    model: str,
    status: int | None,
    error: str | None,
    usage: Mapping[str, Any] | None,
    latency_s: float,
) -> dict[str, Any]:
    """A shadow copy's outcome: the primary's routing decision, the shadow ``model`` and how it answered."""
    return {
        **plan_outcome(origin),
        "model": model,
        "attempts": [model],
        "fallback": None,
        "status": status,
        "error": error,
        "usage": _usage(usage.get("prompt_tokens"), usage.get("completion_tokens")) if usage else None,
        "latency_s": round(latency_s, 6),
        "ttft_s": None,
    }


def _usage(prompt: Any, completion: Any) -> dict[str, int | None]:
    """Token counts; a value that is not a count (a backend's odd usage) is null."""
    return {"prompt_tokens": _count(prompt), "completion_tokens": _count(completion)}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def render(pending: Pending) -> dict[str, Any]:
    """The record's JSON object (run by the writer thread)."""
    record: dict[str, Any] = {
        "v": VERSION,
        "kind": pending.kind,
        "time": round(pending.time, 3),
        "request_id": pending.request_id,
        "instance": pending.instance,
        "policy_version": pending.policy_version,
        "endpoint": pending.endpoint,
        "content": pending.content,
        "request": _request(pending),
        "routing": _routing(pending),
        "outcome": pending.outcome,
    }
    if pending.answer is not None:
        record["answer"] = _answer(pending, pending.answer)
    if pending.shadow is not None:
        record["shadow"] = pending.shadow
    return record


def _request(pending: Pending) -> Any:
    if pending.content == "full":
        return pending.body
    if pending.content == "redacted":
        return pending.redactor.body(pending.body)
    return None


def _routing(pending: Pending) -> dict[str, Any]:
    body = pending.body
    features = RequestFeatures(body, pending.headers, pending.api_key)
    model, user = body.get("model"), body.get("user")
    return {
        "model": model if isinstance(model, str) else None,
        "user": user if isinstance(user, str) else None,
        "metadata": features.metadata,
        "headers": {name: pending.headers[name] for name in pending.kept_headers if name in pending.headers},
        "api_key": pending.api_key,
        "has_tools": features.has_tools,
        "response_format": features.response_format,
        "prompt_chars": features.prompt_chars,
        "max_tokens": _max_tokens(body),
    }


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    """What the client asked for, read as the route's ``max_tokens`` check reads it."""
    return _count(body.get("max_completion_tokens", body.get("max_tokens", body.get("max_output_tokens"))))


def _answer(pending: Pending, answer: FinishedAnswer) -> dict[str, Any]:
    block: dict[str, Any] = {
        "finish_reason": answer.finish_reason,
        "refusal": bool(answer.refusal),
        "tool_calls": [call.name for call in answer.tool_calls if call.name is not None],
    }
    if pending.content == "full":
        block["content"] = answer.content
    elif pending.content == "redacted":
        block["content"] = None if answer.content is None else pending.redactor.text(answer.content)
    return block
