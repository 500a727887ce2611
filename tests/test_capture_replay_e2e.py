"""Capture then replay, end to end: a real gateway captures its own traffic, and `llm-gateway replay` reproduces
every routing decision it made live, from redacted records for every matcher kind but content regexes, and from
full records for those too. An edit that moves one cohort shows exactly that cohort's requests as moved."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.harness import Stack

APP_TOKEN, BATCH_TOKEN = "app-token-e2e", "batch-token-e2e"
MARKER = "zqxmarker"  # in every prompt: a redacted capture must not hold it anywhere

POLICY = """
version: 1
public_models: [assistant]
models:
  base:   {kind: base,   backends: ["${a}"]}
  spec-a: {kind: source, backends: ["${a}"]}
  spec-b: {kind: source, backends: ["${b}"]}
  merged: {kind: merged, sources: [spec-a, spec-b], backends: ["${b}"]}
cohorts:
  CONTENT_RULE
  - {name: tools, match: {has_tools: true}}
  - {name: billing, match: {any: [{header: {x-topic: billing}}, {metadata: {queue: billing}}]}}
  - {name: vip, match: {user: [vip-1, vip-2, vip-3]}}
  - {name: structured, match: {response_format: [json_object, json_schema]}}
  - {name: named, match: {model: spec-b}}
  - {name: long, match: {all: [{min_prompt_chars: 120}, {not: {api_key: batch}}]}}
  - {name: short, match: {max_prompt_chars: 30}}
  - {name: batch, match: {api_key: batch}}
  - {name: rest, default: true}
routes:
  REFUND_ROUTE
  tools: {split: {merged: 30, spec-a: 70}, fallback: [base]}
  billing:
    target: spec-a
    fallback: [base]
    rollout: {candidate: merged, steps: [50, 100], step_s: 3600, min_samples: 100000}
  vip: {split: {merged: 50, spec-b: 50}, sticky: user}
  structured: {target: merged, fallback: [sources]}
  named: {target: spec-a}
  long: {target: spec-b, fallback: [base]}
  short: {target: base}
  batch: {target: base, max_tokens: 30}
  rest: {target: spec-a, fallback: [base]}
keys:
  app: {key: "sha256:APP_DIGEST"}
  batch: {key: "sha256:BATCH_DIGEST", models: [assistant, base]}
""".replace("APP_DIGEST", hashlib.sha256(APP_TOKEN.encode()).hexdigest()).replace(
    "BATCH_DIGEST", hashlib.sha256(BATCH_TOKEN.encode()).hexdigest()
)
CONTENT_RULE = '- {name: refund, match: {content: "(?i)refund"}}'
SIMS = {"a": ["base", "spec-a"], "b": ["spec-b", "merged"]}
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]


def policy_text(content_rule: bool) -> str:
    text = POLICY.replace("CONTENT_RULE", CONTENT_RULE if content_rule else "")
    return text.replace("REFUND_ROUTE", "refund: {target: spec-b}" if content_rule else "")


def requests(count: int, seed: int) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """Varied requests that reach every cohort, the split, the rollout, a named model and three kinds of 4xx."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        words = " ".join(rng.choice(["invoice", "order", "please", "refund", "help", "account"]) for _ in range(3))
        text = f"{MARKER}{i} {words}" + " filler" * rng.choice([0, 0, 20])
        body: dict[str, Any] = {"model": "assistant", "messages": [{"role": "user", "content": text}], "max_tokens": 20}
        headers = {"authorization": f"Bearer {APP_TOKEN}", "x-request-id": f"req-{seed}-{i}"}
        kind = rng.randrange(10)
        if kind == 0:
            body["tools"] = TOOLS
        elif kind == 1:
            headers["x-topic"] = "billing"
        elif kind == 2:
            body["metadata"] = {"queue": "billing"}
        elif kind == 3:
            body["user"] = rng.choice(["vip-1", "vip-2", "vip-3"])
        elif kind == 4:
            body["response_format"] = {"type": "json_object"}
        elif kind == 5:
            body["model"] = rng.choice(["spec-b", "base"])
        elif kind == 6:
            headers["authorization"] = f"Bearer {BATCH_TOKEN}"
            body["max_tokens"] = rng.choice([20, 100])  # 100: over the batch route's limit, a 400
        elif kind == 7:
            body["messages"][0]["content"] = f"{MARKER}{i}"
        elif kind == 8:
            body["model"] = rng.choice(["nope", "spec-a"])  # 404, or allowed for app
            if rng.random() < 0.5:
                headers["authorization"] = f"Bearer {BATCH_TOKEN}"  # spec-a is off batch's list: 403
        out.append((headers["x-request-id"], body, headers))
    return out


def drive(stack: Stack, sent: list[tuple[str, dict[str, Any], dict[str, str]]]) -> dict[str, tuple[int, str, str]]:
    """Request id → (status, cohort, model) as the client saw them; the cohort of a request that named a registry
    model is prefixed with ``pinned:`` (the policy's route does not choose its model)."""
    seen = {}
    with httpx.Client(base_url=stack.url, timeout=20) as client:
        for request_id, body, headers in sent:
            answer = client.post("/v1/chat/completions", json=body, headers=headers)
            cohort = answer.headers.get("x-gateway-cohort", "")
            cohort = cohort if body["model"] == "assistant" else f"pinned:{cohort}"
            seen[request_id] = (answer.status_code, cohort, answer.headers.get("x-gateway-model", ""))
    return seen


def wait_for_records(path: Path, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)
    raise AssertionError(f"{path} has {len(lines)} records, expected {count}")


def replay(*args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "replay", *args, "--json"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def capture_traffic(tmp_path: Path, content: str, content_rule: bool, seed: int) -> tuple[Path, Path, dict]:
    capture = tmp_path / f"capture-{content}.jsonl"
    block = "capture: " + json.dumps({"path": str(capture), "sample": 1.0, "content": content})
    sent = requests(160, seed)
    with Stack(policy_text(content_rule) + block + "\n", SIMS) as stack:
        seen = drive(stack, sent)
        records = wait_for_records(capture, len(sent))
        policy = tmp_path / f"policy-{content}.yaml"
        policy.write_text(stack.policy_path.read_text())
    assert {r["request_id"] for r in records} == set(seen)
    for record in records:  # what the capture says happened is what the client saw
        status, cohort, model = seen[record["request_id"]]
        assert record["outcome"]["status"] == status
        if status == 200:
            assert (record["outcome"]["cohort"], record["outcome"]["model"]) == (cohort.removeprefix("pinned:"), model)
    return capture, policy, seen


def test_a_redacted_capture_holds_no_prompt_text_and_replays_every_live_decision(tmp_path: Path) -> None:
    capture, policy, seen = capture_traffic(tmp_path, "redacted", content_rule=False, seed=1)
    assert MARKER not in capture.read_text()
    statuses = Counter(status for status, _, _ in seen.values())
    assert statuses[200] > 100 and statuses[400] and statuses[403] and statuses[404], statuses
    cohorts = Counter(cohort for status, cohort, _ in seen.values() if status == 200)
    routed = {cohort for cohort in cohorts if not cohort.startswith("pinned:")}
    assert routed == {"tools", "billing", "vip", "structured", "long", "short", "batch", "rest"}, cohorts
    assert "pinned:named" in cohorts

    code, same = replay(str(capture), "--policy", str(policy), "--baseline", str(policy))
    assert code == 0 and same["total"] == len(seen) and same["changed"] == 0, same
    reproduced = same["reproduced"]
    assert reproduced["checked"] == len(seen) and reproduced["matched"] == len(seen), reproduced
    assert same["not_reproducible"] == []
    code, live = replay(str(capture), "--policy", str(policy))
    assert code == 0 and live["changed"] == 0, live

    # Move one cohort: exactly its live requests move, from its old first model to the new one.
    edited = tmp_path / "edited.yaml"
    edited.write_text(policy.read_text().replace("long: {target: spec-b, fallback: [base]}", "long: {target: merged}"))
    moved = sum(1 for status, cohort, _ in seen.values() if status == 200 and cohort == "long")
    code, diff = replay(str(capture), "--policy", str(edited), "--baseline", str(policy), "--max-changed", "0.5")
    assert code == 0 and diff["changed"] == moved, diff
    assert [(m["from"]["cohort"], m["from"]["model"], m["to"]["model"], m["count"]) for m in diff["moves"]] == [
        ("long", "spec-b", "merged", moved)
    ]
    assert abs(diff["changed_share"] - moved / len(seen)) < 1e-9
    share = moved / len(seen)
    assert replay(str(capture), "--policy", str(edited), "--max-changed", f"{share * 0.9:.6f}")[0] == 1
    assert replay(str(capture), "--policy", str(edited), "--max-changed", f"{share * 1.1:.6f}")[0] == 0

    # A limit on a route: its requests asking for more newly get a 400.
    limited = tmp_path / "limited.yaml"
    limited.write_text(
        policy.read_text().replace("rest: {target: spec-a, fallback: [base]}", "rest: {target: spec-a, max_tokens: 10}")
    )
    over = sum(1 for status, cohort, _ in seen.values() if status == 200 and cohort.removeprefix("pinned:") == "rest")
    code, errors = replay(str(capture), "--policy", str(limited), "--baseline", str(policy))
    assert [(e["status"], e["count"]) for e in errors["new_errors"]] == [(400, over)], errors["new_errors"]


def test_content_rules_replay_from_full_records_and_are_reported_without_them(tmp_path: Path) -> None:
    capture, policy, seen = capture_traffic(tmp_path, "full", content_rule=True, seed=2)
    assert MARKER in capture.read_text()
    assert any(cohort == "refund" for status, cohort, _ in seen.values() if status == 200)
    code, same = replay(str(capture), "--policy", str(policy), "--baseline", str(policy))
    assert code == 0 and same["changed"] == 0
    assert same["reproduced"]["checked"] == len(seen) == same["reproduced"]["matched"], same["reproduced"]

    redacted, _, _ = capture_traffic(tmp_path, "none", content_rule=False, seed=3)
    code, blind = replay(str(redacted), "--policy", str(policy))
    kinds = {entry["kind"]: entry for entry in blind["not_reproducible"]}
    assert "content" in kinds and kinds["content"]["cohorts"] == ["refund"], blind["not_reproducible"]
    assert "content: full" in kinds["content"]["why"]
