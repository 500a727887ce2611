"""Traffic capture end to end: sampled requests written as JSONL records by a writer thread, never slowing them."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.capture import Redactor
from gateway.policy import PolicyError, load_policy, parse_policy
from gateway.routing.planner import unit_hash
from tests.harness import Stack

TOKEN = "capture-test-key"
POLICY = """
version: 1
public_models: [assistant]
models:
  primary:   {kind: source,    backends: ["${primary}"]}
  candidate: {kind: candidate, sources: [primary], backends: ["${candidate}"]}
cohorts:
  - {name: billing, match: {header: {x-topic: billing}}}
  - name: legal
    match: {any: [{metadata: {team: legal}}, {not: {header: {x-tier: free}}, content: "(?i)contract"}]}
  - {name: plain, default: true}
routes:
  billing: {target: primary, max_tokens: 50}
  legal: {target: candidate, fallback: [primary]}
  plain: {target: primary}
keys:
  app-frontend: {key: "sha256:KEY_DIGEST"}
CAPTURE
""".replace("KEY_DIGEST", hashlib.sha256(TOKEN.encode()).hexdigest())
SIMS = {"primary": ["primary"], "candidate": ["candidate"]}
AUTH = {"authorization": f"Bearer {TOKEN}"}


def stack_for(path: Path, policy: str = POLICY, **options: Any) -> Stack:
    block = "capture: " + json.dumps({"path": str(path), **options})
    return Stack(policy.replace("CAPTURE", block), SIMS)


def payload(text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "assistant", "messages": [{"role": "user", "content": text}], "max_tokens": 20, **extra}


def post(stack: Stack, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    headers = {**AUTH, **(headers or {})}
    return httpx.post(f"{stack.url}/v1/chat/completions", json=body, headers=headers, timeout=20)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def capture_count(stack: Stack, kind: str, outcome: str) -> float:
    labels = f'kind="{kind}",outcome="{outcome}"'
    for line in httpx.get(f"{stack.url}/metrics").text.splitlines():
        if line.startswith(f"llm_gateway_capture_records_total{{{labels}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def instance_id() -> Iterator[str]:
    os.environ["GATEWAY_INSTANCE_ID"] = "gw/test-1"
    try:
        yield "gw_test-1"  # as it appears in a file name
    finally:
        del os.environ["GATEWAY_INSTANCE_ID"]


def test_every_request_is_captured_with_the_outcome_the_client_saw(tmp_path: Path, instance_id: str) -> None:
    sent: list[tuple[dict[str, Any], httpx.Response]] = []
    with stack_for(tmp_path / "cap-{instance}.jsonl", sample=1.0, content="full", headers=["X-Tenant"]) as stack:
        stack.configure("candidate", {"set": {"error_rate": 1.0, "error_status": 500}})
        headers = {"x-topic": "billing", "x-tier": "gold", "x-tenant": "acme", "x-other": "no", "cookie": "s=1"}
        cases: list[tuple[dict[str, str], dict[str, Any]]] = [
            (headers, payload("question one", user="u-1", metadata={"team": "ops"})),
            ({}, payload("q2", metadata={"team": "legal"}, stream=True, stream_options={"include_usage": True})),
            ({"x-request-id": "fixed-1"}, payload("question 3", response_format={"type": "json_object"})),
        ]
        for extra, body in cases:
            response = post(stack, body, extra)
            assert response.status_code == 200, response.text
            sent.append((body, response))
    path = tmp_path / f"cap-{instance_id}.jsonl"
    by_id = {r["request_id"]: r for r in records(path)}
    assert len(by_id) == 3
    for body, response in sent:
        record = by_id[response.headers["x-request-id"]]
        outcome = record["outcome"]
        assert (record["v"], record["kind"], record["endpoint"], record["content"]) == (1, "primary", "chat", "full")
        assert record["instance"] == "gw/test-1"
        assert record["policy_version"] == response.headers["x-gateway-policy-version"]
        assert outcome["cohort"] == response.headers["x-gateway-cohort"]
        assert outcome["route"] == response.headers["x-gateway-route"]
        assert outcome["model"] == response.headers["x-gateway-model"]
        assert outcome["fallback"] == response.headers.get("x-gateway-fallback")
        assert outcome["status"] == 200 and outcome["error"] is None
        assert 0 < outcome["ttft_s"] <= outcome["latency_s"] < 20
        assert record["request"] == body
        assert record["routing"]["api_key"] == "app-frontend"
        assert record["routing"]["prompt_chars"] == len(body["messages"][0]["content"])
        assert record["answer"]["finish_reason"] in ("stop", "length")
        if body.get("stream"):
            usage = next(json.loads(line[6:])["usage"] for line in response.text.splitlines() if '"usage":{' in line)
        else:
            usage = response.json()["usage"]
            assert record["answer"]["content"] == response.json()["choices"][0]["message"]["content"]
        assert outcome["usage"] == {
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
        }
    billing = by_id[sent[0][1].headers["x-request-id"]]
    assert billing["outcome"]["cohort"] == "billing" and billing["outcome"]["rule"] == "cohorts[0]"
    assert billing["outcome"]["attempts"] == ["primary"] and billing["outcome"]["primary"] == "primary"
    assert billing["routing"]["headers"] == {"x-topic": "billing", "x-tier": "gold", "x-tenant": "acme"}
    assert (billing["routing"]["user"], billing["routing"]["metadata"]) == ("u-1", {"team": "ops"})
    assert billing["routing"]["max_tokens"] == 20 and billing["routing"]["model"] == "assistant"
    legal = by_id[sent[1][1].headers["x-request-id"]]["outcome"]
    assert legal["cohort"] == "legal" and legal["fallback"] == "error:candidate"
    assert legal["attempts"] == ["candidate", "primary"] and legal["primary"] == "candidate"
    assert by_id["fixed-1"]["routing"]["response_format"] == "json_object"
    text = path.read_text()
    assert TOKEN not in text and "authorization" not in text and "s=1" not in text
    assert path.stat().st_mode & 0o777 == 0o600


SECRET = "my secret refund text 12345, ünïcode"


@pytest.mark.parametrize("content", ["full", "redacted", "none"])
def test_content_modes(tmp_path: Path, content: str) -> None:
    path = tmp_path / "cap.jsonl"
    body = payload(SECRET, user="u-7", metadata={"team": "ops"})
    body["messages"] = [
        {"role": "system", "content": "be brief"},
        *body["messages"],
        {"role": "user", "content": SECRET},
    ]
    with stack_for(path, sample=1.0, content=content) as stack:
        answers = [post(stack, body).json()["choices"][0]["message"]["content"] for _ in range(2)]
    first, second = records(path)
    text = path.read_text()
    assert first["content"] == content
    assert first["routing"]["prompt_chars"] == len("be brief") + 2 * len(SECRET)
    assert (first["routing"]["user"], first["routing"]["metadata"]) == ("u-7", {"team": "ops"})
    if content == "full":
        assert first["request"] == body and first["answer"]["content"] == answers[0]
        return
    assert "secret" not in text and "be brief" not in text and answers[0] not in text
    if content == "none":
        assert first["request"] is None and "content" not in first["answer"]
        return
    request = first["request"]
    assert [m["role"] for m in request["messages"]] == ["system", "user", "user"]
    assert (request["model"], request["user"], request["metadata"], request["max_tokens"]) == (
        "assistant",
        "u-7",
        {"team": "ops"},
        20,
    )
    hidden = request["messages"][1]["content"]
    assert len(hidden) == len(SECRET) and hidden != SECRET
    assert hidden == request["messages"][2]["content"] == second["request"]["messages"][1]["content"]
    assert hidden == Redactor().text(SECRET)  # no hash_key: anyone can hash a guess, hence hash_key
    assert len(first["answer"]["content"]) == len(answers[0])


def test_hash_key_keys_the_hashes_and_an_unset_one_captures_no_content(tmp_path: Path) -> None:
    os.environ["CAPTURE_TEST_HASH_KEY"] = "s3cret"
    try:
        with stack_for(tmp_path / "keyed.jsonl", sample=1.0, hash_key="env:CAPTURE_TEST_HASH_KEY") as stack:
            assert post(stack, payload(SECRET)).status_code == 200
    finally:
        del os.environ["CAPTURE_TEST_HASH_KEY"]
    (keyed,) = records(tmp_path / "keyed.jsonl")
    hidden = keyed["request"]["messages"][0]["content"]
    assert keyed["content"] == "redacted" and hidden == Redactor(b"s3cret").text(SECRET) != Redactor().text(SECRET)
    with stack_for(tmp_path / "unset.jsonl", sample=1.0, hash_key="env:CAPTURE_TEST_HASH_KEY") as stack:
        assert post(stack, payload(SECRET)).status_code == 200
    (unkeyed,) = records(tmp_path / "unset.jsonl")
    assert unkeyed["content"] == "none" and unkeyed["request"] is None


def test_sampling_is_per_cohort_and_a_pure_function_of_the_request_id(tmp_path: Path) -> None:
    path = tmp_path / "cap.jsonl"
    topics = {"billing": {"x-topic": "billing"}, "legal": {"x-tier": "free"}, "plain": {}}
    sent: dict[str, str] = {}
    with stack_for(path, sample=0.5, cohorts={"billing": 1.0, "legal": 0.0}) as stack:
        for i in range(30):
            for cohort, headers in topics.items():
                request_id = f"{cohort}-{i}"
                text = "a contract question" if cohort == "legal" else "hi"
                body = payload(text, metadata={"team": "legal"}) if cohort == "legal" else payload(text)
                response = post(stack, body, {**headers, "x-request-id": request_id})
                assert response.headers["x-gateway-cohort"] == cohort
                sent[request_id] = cohort
    captured = {r["request_id"] for r in records(path)}
    share = {"billing": 1.0, "legal": 0.0, "plain": 0.5}
    expected = {rid for rid, cohort in sent.items() if unit_hash("capture:" + rid) < share[cohort]}
    assert captured == expected
    assert 5 <= len([rid for rid in captured if rid.startswith("plain-")]) <= 25
    assert all(not rid.startswith("legal-") for rid in captured)


def test_a_request_refused_after_authentication_is_captured_with_its_error(tmp_path: Path) -> None:
    path = tmp_path / "cap.jsonl"
    with stack_for(path, sample=1.0) as stack:
        too_long = post(stack, payload(max_tokens=100), {"x-topic": "billing", "x-request-id": "over-limit"})
        unknown = post(stack, {**payload(), "model": "nope"}, {"x-request-id": "unknown-model"})
        unauthenticated = httpx.post(
            f"{stack.url}/v1/chat/completions", json=payload(), headers={"x-request-id": "no-key"}, timeout=20
        )
    assert (too_long.status_code, unknown.status_code, unauthenticated.status_code) == (400, 404, 401)
    by_id = {r["request_id"]: r for r in records(path)}
    assert set(by_id) == {"over-limit", "unknown-model"}
    over = by_id["over-limit"]["outcome"]
    assert (over["status"], over["error"], over["cohort"], over["route"]) == (
        400,
        "invalid_request_error",
        "billing",
        "billing",
    )
    assert over["model"] is None and over["usage"] is None and over["attempts"] == []
    assert by_id["over-limit"]["routing"]["max_tokens"] == 100 and "answer" not in by_id["over-limit"]
    missing = by_id["unknown-model"]["outcome"]
    assert (missing["status"], missing["error"], missing["cohort"], missing["primary"]) == (
        404,
        "model_not_found",
        None,
        None,
    )
    assert by_id["unknown-model"]["routing"]["model"] == "nope"


def test_files_rotate_at_max_bytes_and_keep_that_many(tmp_path: Path) -> None:
    path = tmp_path / "cap.jsonl"
    with stack_for(path, sample=1.0, content="full", max_bytes=3000, keep=2) as stack:
        for i in range(25):
            assert post(stack, payload(), {"x-request-id": f"rot-{i}"}).status_code == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap.jsonl", "cap.jsonl.1", "cap.jsonl.2"]
    assert all(0 < (tmp_path / name).stat().st_size <= 3000 for name in ("cap.jsonl", "cap.jsonl.1", "cap.jsonl.2"))
    ids = [r["request_id"] for name in ("cap.jsonl.2", "cap.jsonl.1", "cap.jsonl") for r in records(tmp_path / name)]
    assert ids == [f"rot-{i}" for i in range(25 - len(ids), 25)] and len(ids) < 25  # the oldest were rotated out


def test_a_full_queue_drops_records_never_requests(tmp_path: Path) -> None:
    fifo = tmp_path / "stuck.jsonl"
    os.mkfifo(fifo)  # opening it for writing blocks until a reader comes: a disk that hangs
    reader = -1
    try:
        with stack_for(fifo, sample=1.0, queue=1) as stack:
            for i in range(10):
                assert post(stack, payload(), {"x-request-id": f"q-{i}"}).status_code == 200
            # one record is in the blocked writer, one waits in the queue: the other eight are dropped
            assert stack.wait_for(lambda: capture_count(stack, "primary", "dropped") == 8)
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the writer's open returns; it writes and drains
            assert stack.wait_for(lambda: capture_count(stack, "primary", "written") == 2)
        lines = os.read(reader, 1 << 20).splitlines()
        assert [json.loads(line)["request_id"] for line in lines] == ["q-0", "q-1"]
    finally:
        if reader >= 0:
            os.close(reader)


def test_an_unwritable_path_counts_errors_and_is_tried_again(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the capture directory should be")
    path = blocker / "cap.jsonl"
    with stack_for(path, sample=1.0) as stack:
        for _ in range(5):
            assert post(stack, payload()).status_code == 200
        assert stack.wait_for(lambda: capture_count(stack, "primary", "error") == 5)
        blocker.unlink()  # the directory can be made now: the next records are written
        for i in range(3):
            assert post(stack, payload(), {"x-request-id": f"later-{i}"}).status_code == 200
        assert stack.wait_for(lambda: capture_count(stack, "primary", "written") == 3)
    assert [r["request_id"] for r in records(path)] == ["later-0", "later-1", "later-2"]


def test_mirror_capture_writes_shadow_records(tmp_path: Path) -> None:
    shadow_path = tmp_path / "shadow.jsonl"
    policy = POLICY.replace(
        "plain: {target: primary}",
        "plain:\n    target: primary\n    mirror: {to: [candidate], sample: 1.0, capture: "
        + json.dumps({"path": str(shadow_path), "content": "none"})
        + "}",
    )
    with stack_for(tmp_path / "primary.jsonl", policy, sample=0.0) as stack:
        response = post(stack, payload(SECRET), {"x-request-id": "mirrored-1", "x-tier": "gold"})
        assert response.status_code == 200
        assert stack.wait_for(lambda: capture_count(stack, "shadow", "written") == 1)
    (record,) = records(shadow_path)
    assert (record["kind"], record["request_id"], record["content"], record["request"]) == (
        "shadow",
        "mirrored-1",
        "none",
        None,
    )
    assert record["outcome"]["model"] == "candidate" and record["outcome"]["status"] == 200
    assert record["outcome"]["cohort"] == "plain" and record["outcome"]["primary"] == "primary"
    assert record["outcome"]["usage"]["completion_tokens"] > 0 and record["outcome"]["latency_s"] > 0
    assert record["shadow"]["reason"] == "mirror" and record["shadow"]["primary_model"] == "primary"
    assert set(record["shadow"]["agreement"]) >= {"finish_reason", "length_ratio"}
    assert record["routing"]["headers"] == {"x-tier": "gold"} and "content" not in record["answer"]
    assert SECRET not in shadow_path.read_text()
    assert records(tmp_path / "primary.jsonl") == []  # sample 0: no primary record


@pytest.mark.parametrize(
    ("capture", "expected"),
    [
        (
            "{path: c.jsonl, cohorts: {biling: 0.5}}",
            "p.yaml:9:44: capture.cohorts.biling: unknown cohort 'biling' (did you mean 'billing'?)",
        ),
        (
            "{path: c.jsonl, headers: [x-ok, Authorization]}",
            "p.yaml:9:42: capture.headers[1]: 'Authorization' carries a credential",
        ),
        ("{path: c.jsonl, headers: ['x y']}", "capture.headers[0]: 'x y' is not a valid header name"),
        ("{path: c.jsonl, hash_key: secret}", "capture.hash_key: String should match pattern"),
    ],
)
def test_policy_checks_of_capture(capture: str, expected: str) -> None:
    text = """\
version: 1
models:
  base: {kind: base, backends: [http://127.0.0.1:9001]}
cohorts:
  - {name: billing, match: {header: {x-topic: billing}}}
  - {name: other, default: true}
routes:
  other: {target: base, mirror: {to: [base], capture: {path: m.jsonl}}}
capture: CAPTURE
"""
    with pytest.raises(PolicyError) as caught:
        parse_policy(text.replace("CAPTURE", capture), "p.yaml")
    assert any(expected in line for line in str(caught.value).splitlines()), str(caught.value)
    same_file = text.replace("CAPTURE", "{path: m.jsonl}")
    with pytest.raises(PolicyError, match=r"routes\.other\.mirror\.capture\.path: the same file as capture\.path"):
        parse_policy(same_file, "p.yaml")


def test_a_reload_moves_capture_to_the_new_file_and_can_turn_it_off(tmp_path: Path) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    with stack_for(first, sample=1.0) as stack:
        assert post(stack, payload(), {"x-request-id": "before"}).status_code == 200
        for block in (f'capture: {{path: "{second}", sample: 1.0}}', ""):
            stack.policy_path.write_text(
                stack.policy_path.read_text().split("capture:")[0] + block + "\n", encoding="utf-8"
            )
            assert stack.gateway is not None
            stack.call(stack.gateway.apply_policy(load_policy(stack.policy_path)))
            assert post(stack, payload(), {"x-request-id": f"after-{bool(block)}"}).status_code == 200
    assert [r["request_id"] for r in records(first)] == ["before"]
    assert [r["request_id"] for r in records(second)] == ["after-True"]
