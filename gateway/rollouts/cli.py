"""``llm-gateway rollout``: an operator's hands on a running gateway's progressive rollouts, through its admin API.

``status`` lists every rollout (``GET /admin/rollouts``) as a table, or as the API's JSON; ``pause``, ``resume``,
``abort`` and ``promote`` act on one route's rollout (``POST /admin/rollouts/{route}``). Exit codes: 0 done, 1 the
gateway refused (401, 404, 409, 400, 503) or could not be reached, with the reason in one line, 2 a usage error.
httpx is imported only when a request is sent: the CLI builds every subcommand's parser at start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from urllib.parse import quote

ACTIONS = {
    "pause": "hold the rollout at its step (the analysis stops judging it)",
    "resume": "go on from a pause, or start again at the first step after a rollback",
    "abort": "roll back: 0 %% on the candidate, held until resumed",
    "promote": "100 %% on the candidate now, without the remaining steps",
}
TOKEN_VARIABLE = "GATEWAY_ADMIN_TOKEN"
COLUMNS = ("ROUTE", "CANDIDATE", "STATE", "STEP", "WEIGHT", "SINCE", "EVIDENCE", "REASON")


class UsageError(Exception):
    """A bad invocation (exit 2)."""


class Refused(Exception):
    """The gateway refused the call, or could not be reached (exit 1)."""


def add_rollout_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(
        dest="rollout_command", required=True, metavar="{status," + ",".join(ACTIONS) + "}"
    )
    status = commands.add_parser("status", help="every rollout: state, step, weight and the evidence of its step")
    status.add_argument("--json", action="store_true", help="print the admin API's JSON")
    _add_connection(status)
    for action, help_text in ACTIONS.items():
        command = commands.add_parser(action, help=help_text)
        command.add_argument("route", help="the route whose rollout to act on (a cohort name)")
        _add_connection(command)


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the gateway's base URL (its --admin-port listener if it has one)")
    parser.add_argument("--token", help=f"the admin token (default: ${TOKEN_VARIABLE})")
    parser.add_argument("--timeout-s", type=float, default=10.0, metavar="S", help="per call (default %(default)s)")


def run_rollout(args: argparse.Namespace) -> int:
    try:
        base, token = _target(args)
        if args.rollout_command == "status":
            answer = _call("GET", f"{base}/admin/rollouts", token, None, args.timeout_s)
            rollouts = answer.get("rollouts")
            if not isinstance(rollouts, list) or not all(isinstance(r, dict) for r in rollouts):
                raise Refused(f"{base}/admin/rollouts: the answer has no 'rollouts' list")
            print(json.dumps(answer, indent=2) if args.json else render_table(rollouts))
        else:
            url = f"{base}/admin/rollouts/{quote(args.route, safe='')}"
            print(describe(_call("POST", url, token, {"action": args.rollout_command}, args.timeout_s)))
    except UsageError as exc:
        print(f"llm-gateway rollout: {exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"llm-gateway rollout: {exc}", file=sys.stderr)
        return 1
    return 0


def _target(args: argparse.Namespace) -> tuple[str, str]:
    base = str(args.url).rstrip("/")
    if not base.startswith(("http://", "https://")) or len(base.split("://", 1)[1]) == 0:
        raise UsageError(f"--url must be http(s)://HOST[:PORT], got {args.url!r}")
    token = args.token or os.environ.get(TOKEN_VARIABLE, "")
    if not token:
        raise UsageError(f"the admin API needs a token: pass --token or set ${TOKEN_VARIABLE}")
    if args.timeout_s <= 0:
        raise UsageError("--timeout-s must be > 0")
    return base, token


def _call(method: str, url: str, token: str, body: dict[str, Any] | None, timeout_s: float) -> dict[str, Any]:
    """One admin call; its JSON object, or :class:`Refused` naming what went wrong (never the token)."""
    import httpx

    try:
        response = httpx.request(
            method, url, json=body, headers={"authorization": f"Bearer {token}"}, timeout=timeout_s
        )
    except httpx.InvalidURL as exc:
        raise UsageError(f"--url: {exc}") from None
    except httpx.HTTPError as exc:
        raise Refused(f"cannot reach {url}: {exc or type(exc).__name__}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code == 200 and isinstance(answer, dict):
        return answer
    error = answer.get("error") if isinstance(answer, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        message = " ".join(response.text.split())[:200] or "(no body)"
    code = f" {error['code']}" if isinstance(error, dict) and isinstance(error.get("code"), str) else ""
    if response.status_code == 401:
        message += f" (check --token or ${TOKEN_VARIABLE})"
    raise Refused(f"{method} {url}: {message} ({response.status_code}{code})")


def render_table(rollouts: list[dict[str, Any]]) -> str:
    """One row per rollout, columns padded; the reason (free text) last."""
    if not rollouts:
        return "no rollouts: no route of the policy in force has a 'rollout'"
    rows = [COLUMNS, *(_row(r) for r in rollouts)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in rows
    )


def _row(rollout: dict[str, Any]) -> tuple[str, ...]:
    return (
        str(rollout.get("route", "?")),
        str(rollout.get("candidate", "?")),
        str(rollout.get("state", "?")),
        _step(rollout),
        _percent(rollout.get("weight")),
        _duration(rollout.get("since_s")),
        evidence_summary(rollout.get("evidence")),
        str(rollout.get("reason", "")),
    )


def describe(rollout: dict[str, Any]) -> str:
    """An action's outcome in one line: ``billing: merged-v1 paused, step 2/4, 25% (pause by an operator)``."""
    where = f"step {_step(rollout)}, {_percent(rollout.get('weight'))} on the candidate"
    reason = rollout.get("reason")
    return f"{rollout.get('route', '?')}: {rollout.get('candidate', '?')} {rollout.get('state', '?')}, {where}" + (
        f" ({reason})" if reason else ""
    )


def evidence_summary(evidence: Any) -> str:
    """The current step's evidence, short: answers, failed attempts, p95 latency against the incumbent's."""
    if not isinstance(evidence, dict):
        return "-"
    text = f"{evidence.get('answers', 0)} answers, {evidence.get('failed', 0)}/{evidence.get('attempts', 0)} failed"
    candidate, incumbent = evidence.get("candidate_p95_s"), evidence.get("incumbent_p95_s")
    if isinstance(candidate, int | float) and isinstance(incumbent, int | float):
        ratio = evidence.get("latency_ratio")
        text += f", p95 {candidate:.2f}s vs {incumbent:.2f}s" + (f" (x{ratio:g})" if ratio is not None else "")
    elif isinstance(candidate, int | float):
        text += f", p95 {candidate:.2f}s"
    if evidence.get("gate_tripped"):
        text += ", eval gate tripped"
    return text


def _step(rollout: dict[str, Any]) -> str:
    steps, step = rollout.get("steps"), rollout.get("step")
    if not isinstance(steps, list) or not isinstance(step, int):
        return "?"
    return f"{step + 1}/{len(steps)}"


def _percent(weight: Any) -> str:
    return f"{weight:g}%" if isinstance(weight, int | float) else "?"


def _duration(seconds: Any) -> str:
    """``42s``, ``5m07s``, ``3h05m``, ``2d04h``: how long the rollout has been in its state."""
    if not isinstance(seconds, int | float) or seconds < 0:
        return "?"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86_400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86_400}d{whole % 86_400 // 3600:02d}h"
