"""The CLI contract: explain (text and JSON) and serve on the embedded default, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.harness import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "routing_policies" / "local.yaml"


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        input=stdin,
        check=False,
    )


def explain_json(body: dict[str, object], *extra: str) -> dict[str, object]:
    result = run_cli("explain", "--policy", str(LOCAL), "-", "--json", *extra, stdin=json.dumps(body))
    assert result.returncode == 0, result.stderr
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def test_explain_json_names_cohort_rule_route_attempts() -> None:
    body = {"model": "support-assistant", "messages": [{"role": "user", "content": "I want a refund"}]}
    result = explain_json(body)
    assert result["cohort"] == "billing_refund"
    assert result["rule"] == "cohorts[1] billing_refund: any[1]: content"
    assert result["route"] == "billing_refund"
    assert result["attempts"] == [
        {"model": "merged-v1", "why": "route target"},
        {"model": "billing-specialist", "why": "fallback"},
        {"model": "base", "why": "fallback"},
    ]
    assert result["mirror"] == {"configured": False, "sampled": False}


def test_explain_header_and_split_text_output(tmp_path: Path) -> None:
    request = tmp_path / "req.json"
    request.write_text(
        json.dumps(
            {
                "model": "support-assistant",
                "user": "alice",
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            }
        )
    )
    result = run_cli("explain", "--policy", str(LOCAL), str(request))
    assert result.returncode == 0, result.stderr
    assert "cohort:   tool_required" in result.stdout
    assert "split:    {'merged-v1': 10.0, 'billing-specialist': 90.0} sticky=user" in result.stdout
    assert "(split arm (u=" in result.stdout
    header = explain_json(
        {"model": "support-assistant", "messages": [{"role": "user", "content": "hi"}]}, "--header", "x-topic: billing"
    )
    assert header["cohort"] == "billing_refund"
    assert header["rule"] == "cohorts[1] billing_refund: any[0]: header"


def test_explain_mirror_decision_is_deterministic_per_request_id() -> None:
    policy = ROOT / "routing_policies" / "example.yaml"
    body = json.dumps(
        {"model": "support-assistant", "messages": [{"role": "user", "content": "x"}], "metadata": {"queue": "policy"}}
    )
    decisions = []
    for i in range(40):
        out = run_cli("explain", "--policy", str(policy), "-", "--json", "--request-id", f"r{i % 20}", stdin=body)
        mirror = json.loads(out.stdout)["mirror"]
        assert mirror["configured"] is True
        decisions.append(mirror["sampled"])
    assert decisions[:20] == decisions[20:]


def test_explain_bad_input() -> None:
    result = run_cli("explain", "--policy", str(LOCAL), "-", stdin="{nope")
    assert result.returncode == 2
    assert "cannot read a JSON request body" in result.stderr


def test_serve_embedded_default_answers_a_chat_completion() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--policy", str(LOCAL), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "support-assistant", "messages": [{"role": "user", "content": "a refund please"}]},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "merged-v1"
        assert response.headers["x-gateway-policy-version"].startswith("local-default/")
    finally:
        process.terminate()
        process.wait(10)
        assert process.stderr is not None
        process.stderr.close()


def test_serve_refuses_a_broken_policy(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(LOCAL.read_text().replace("target: base", "target: bsae"))
    result = run_cli("serve", "--policy", str(bad))
    assert result.returncode == 1
    assert "unknown model 'bsae' (did you mean 'base'?)" in result.stderr
