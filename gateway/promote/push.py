"""``--push URL``: hand the offline evidence to a running gateway (``POST /admin/evals``) so its eval windows start
from it instead of from nothing. Every evaluated model is pushed, baselines included, under the offline evaluator
names, which are the online ones where they mean the same (``json_valid``, ``json_schema``, ``tool_call_valid``).
The gateway validates a push whole: one unknown model or cohort and nothing is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from gateway.promote.decide import CohortDecision


class PushFailed(Exception):
    pass


def push_results(decisions: Sequence[CohortDecision]) -> list[dict[str, Any]]:
    return [
        {"model": model, "cohort": d.cohort, "evaluator": name, "passed": rate.passed, "failed": rate.failed}
        for d in decisions
        for model, summary in d.models.items()
        for name, rate in summary.rates.items()
        if rate.n
    ]


def push(url: str, token: str, results: list[dict[str, Any]], *, timeout_s: float = 30.0) -> dict[str, Any]:
    """POST the results to ``url`` (a gateway base URL, or its full ``/admin/evals`` URL); the gateway's answer."""
    target = url.rstrip("/")
    if not target.endswith("/admin/evals"):
        target += "/admin/evals"
    if not results:
        raise PushFailed("nothing to push: no evaluator had an outcome")
    try:
        response = httpx.post(
            target, json={"results": results}, headers={"authorization": f"Bearer {token}"}, timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        raise PushFailed(f"{target}: {exc}") from None
    if response.status_code != 200:
        raise PushFailed(f"{target} answered {response.status_code}: {response.text[:300]}")
    answer: dict[str, Any] = response.json()
    return answer
