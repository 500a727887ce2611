"""``llm-gateway rollout`` against a running gateway (status, pause, resume, abort, promote, and their refusals), and
``explain`` (offline and ``POST /admin/explain``) showing a route's rollout and where this request lands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Stack, free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "rollout-cli-token"
POLICY = """
version: 1
public_models: [assistant]
models:
  incumbent: {kind: source, backends: ["${inc}"]}
  merged-v1: {kind: merged, sources: [incumbent], backends: ["${cand}"]}
cohorts:
  - {name: billing, match: {header: {x-topic: billing}}}
  - {name: chat, default: true}
routes:
  billing:
    target: incumbent
    rollout: {candidate: merged-v1, steps: [5, 25, 50, 100], step_s: 3600, min_samples: 200, sticky: user}
  chat: {target: incumbent}
"""
SIMS = {"inc": ["incumbent"], "cand": ["merged-v1"]}
ON_CANDIDATE_AT_5 = "user-37"  # its hash for (billing, merged-v1) is below 0.05: on the candidate from the first step
ON_INCUMBENT_UNTIL_100 = "user-0"  # its hash is about 0.90


@pytest.fixture
def stack() -> Iterator[Stack]:
    os.environ["GATEWAY_ADMIN_TOKEN"] = TOKEN
    try:
        with Stack(POLICY, SIMS) as running:
            yield running
    finally:
        del os.environ["GATEWAY_ADMIN_TOKEN"]


def run_cli(*args: str, stdin: str | None = None, token_in_env: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_ADMIN_TOKEN"}
    if token_in_env:
        env["GATEWAY_ADMIN_TOKEN"] = TOKEN
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        input=stdin,
        check=False,
    )


def rollout(stack: Stack, *action: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    return run_cli("rollout", *action, "--url", stack.url, "--token", token)


def status_json(stack: Stack) -> dict[str, Any]:
    result = rollout(stack, "status", "--json")
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)["rollouts"][0]
    return found


def body(user: str) -> dict[str, Any]:
    return {"model": "assistant", "user": user, "messages": [{"role": "user", "content": "hi"}]}


def test_status_prints_a_table_and_the_json(stack: Stack) -> None:
    result = run_cli("rollout", "status", "--url", stack.url, token_in_env=True)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["ROUTE", "CANDIDATE", "STATE", "STEP", "WEIGHT", "SINCE", "EVIDENCE", "REASON"]
    cells = row.split("  ")
    assert [c.strip() for c in cells if c.strip()][:5] == ["billing", "merged-v1", "progressing", "1/4", "5%"]
    assert "0 answers, 0/0 failed" in row and row.rstrip().endswith("started")
    found = status_json(stack)
    assert found["route"] == "billing" and found["candidate"] == "merged-v1"
    assert found["steps"] == [5, 25, 50, 100] and found["weight"] == 5.0 and found["state"] == "progressing"
    assert found["evidence"]["answers"] == 0


def test_pause_resume_abort_promote_and_the_refusals(stack: Stack) -> None:
    paused = rollout(stack, "pause", "billing")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == "billing: merged-v1 paused, step 1/4, 5% on the candidate (pause by an operator)"
    assert status_json(stack)["state"] == "paused"

    again = rollout(stack, "pause", "billing")
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.strip() == (
        f"llm-gateway rollout: POST {stack.url}/admin/rollouts/billing: cannot pause a rollout that is paused "
        "(409 rollout_conflict)"
    )

    assert rollout(stack, "resume", "billing").returncode == 0
    assert status_json(stack)["state"] == "progressing"
    aborted = rollout(stack, "abort", "billing")
    assert aborted.returncode == 0, aborted.stderr
    assert "billing: merged-v1 rolled_back, step 1/4, 0% on the candidate" in aborted.stdout
    assert (status_json(stack)["state"], status_json(stack)["weight"]) == ("rolled_back", 0.0)
    promoted = run_cli("rollout", "promote", "billing", "--url", stack.url, token_in_env=True)
    assert promoted.returncode == 0, promoted.stderr
    assert "billing: merged-v1 promoted, step 1/4, 100% on the candidate" in promoted.stdout
    assert status_json(stack)["weight"] == 100.0

    unknown = rollout(stack, "pause", "chat")
    assert unknown.returncode == 1 and "route 'chat' has no rollout (400" in unknown.stderr
    wrong = rollout(stack, "status", token="not-the-token")
    assert wrong.returncode == 1 and "(401" in wrong.stderr and "check --token or $GATEWAY_ADMIN_TOKEN" in wrong.stderr
    assert "not-the-token" not in wrong.stderr


def test_usage_and_connection_errors_have_their_exit_codes() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = run_cli("rollout", "status", "--url", nobody, "--token", TOKEN)
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith(f"llm-gateway rollout: cannot reach {nobody}/admin/rollouts: ")
    assert len(unreachable.stderr.strip().splitlines()) == 1
    no_token = run_cli("rollout", "pause", "billing", "--url", nobody)
    assert no_token.returncode == 2 and "pass --token or set $GATEWAY_ADMIN_TOKEN" in no_token.stderr
    bad_url = run_cli("rollout", "status", "--url", "localhost:8080", "--token", TOKEN)
    assert bad_url.returncode == 2 and "--url must be http(s)://HOST[:PORT]" in bad_url.stderr
    assert run_cli("rollout", "stop", "billing", "--url", nobody).returncode == 2
    assert run_cli("rollout", "pause", "--url", nobody).returncode == 2  # no route


def test_offline_explain_shows_the_first_step_and_where_the_request_lands(stack: Stack) -> None:
    def explain(user: str, *extra: str) -> subprocess.CompletedProcess[str]:
        args = ("explain", "--policy", str(stack.policy_path), "-", "--header", "x-topic: billing", *extra)
        return run_cli(*args, stdin=json.dumps(body(user)))

    on = json.loads(explain(ON_CANDIDATE_AT_5, "--json").stdout)
    assert on["rollout"]["u"] < 0.05
    assert on["rollout"] == {
        "candidate": "merged-v1",
        "incumbent": "incumbent",
        "steps": [5, 25, 50, 100],
        "live": False,
        "state": "first step",
        "step": 0,
        "weight": 5.0,
        "applies": True,
        "u": on["rollout"]["u"],
        "lands_on_candidate": True,
        "sticky": "user",
        "key": "user",
    }
    assert on["attempts"] == [
        {"model": "merged-v1", "why": f"rollout candidate (u={on['rollout']['u']:.4f} < 5%)"},
        {"model": "incumbent", "why": "rollout incumbent"},
    ]
    off = json.loads(explain(ON_INCUMBENT_UNTIL_100, "--json").stdout)
    assert off["rollout"]["lands_on_candidate"] is False and off["rollout"]["u"] >= 0.05
    assert off["attempts"] == [{"model": "incumbent", "why": f"rollout incumbent (u={off['rollout']['u']:.4f} >= 5%)"}]
    text = explain(ON_CANDIDATE_AT_5).stdout
    assert "rollout:  incumbent → merged-v1 at 5% (first step 1/4; offline, no live state)" in text
    assert f"this request: u={on['rollout']['u']} → the candidate (sticky=user, key: user)" in text
    chat = json.loads(
        run_cli("explain", "--policy", str(stack.policy_path), "-", "--json", stdin=json.dumps(body("x"))).stdout
    )
    assert chat["rollout"] is None


def test_admin_explain_shows_the_live_weight(stack: Stack) -> None:
    def explain() -> dict[str, Any]:
        headers = {"authorization": f"Bearer {TOKEN}", "x-topic": "billing"}
        response = httpx.post(f"{stack.url}/admin/explain", json=body(ON_INCUMBENT_UNTIL_100), headers=headers)
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    before = explain()["rollout"]
    assert (before["live"], before["state"], before["weight"], before["lands_on_candidate"]) == (
        True,
        "progressing",
        5.0,
        False,
    )
    assert rollout(stack, "promote", "billing").returncode == 0
    after = explain()
    assert after["rollout"]["state"] == "promoted" and after["rollout"]["weight"] == 100.0
    assert after["rollout"]["lands_on_candidate"] is True and after["rollout"]["u"] == before["u"]
    assert after["attempts"][0] == {"model": "merged-v1", "why": f"rollout candidate (u={before['u']:.4f} < 100%)"}
    answer = httpx.post(
        f"{stack.url}/v1/chat/completions", json=body(ON_INCUMBENT_UNTIL_100), headers={"x-topic": "billing"}
    )
    assert answer.headers["x-gateway-model"] == "merged-v1"  # the explain agrees with the request path
