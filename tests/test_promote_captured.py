"""Captured traffic as an eval dataset: the loader's edge cases, and the real CLI against simulated backends.

The simulators make the candidate break every JSON answer and write longer answers than the baselines (so it is cut
at a ``max_tokens`` the others fit in), and one source refuse everything; the captured-case evaluators
(``not_truncated``, ``no_refusal``, ``agreement``) and ``json_valid`` must show exactly that, per model.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.evals.answer import FinishedAnswer
from gateway.policy import parse_policy
from gateway.promote.captured import MAX_LINE_BYTES, is_capture, load_capture, sample, sample_key
from gateway.promote.dataset import Case, DatasetError, LiveAnswer
from gateway.promote.scoring import CASE_EVALUATORS, REPORTED_ONLY, agreement

ROOT = Path(__file__).resolve().parent.parent
POLICY = """
version: 1
public_models: [assistant]
models:
  base:      {kind: base, backends: ["sim://base"], served_name: base-7b}
  source-a:  {kind: source, backends: ["sim://src"]}
  source-b:  {kind: source, backends: ["sim://src"]}
  merged-v1: {kind: merged, sources: [source-a, source-b], backends: ["sim://merged"]}
cohorts:
  - {name: tool_required, match: {has_tools: true}}
  - {name: structured, match: {response_format: [json_object, json_schema]}}
  - {name: billing, match: {header: {x-topic: billing}}}
  - {name: chat, default: true}
routes:
  tool_required: {target: source-a}
  structured:    {target: source-a}
  billing:       {target: merged-v1}
  chat:          {target: base}
"""
SIM_PROFILE = """
seed: 3
models:
  merged-v1: {invalid_json_rate: 1.0, output_tokens: 24}
  source-b:  {refusal_rate: 1.0}
"""
TOOLS = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]
CLIENT = {"model": "assistant", "stream": True, "stream_options": {"include_usage": True}, "user": "u-1"}


def record(rid: str, body: dict[str, Any] | None, **fields: Any) -> dict[str, Any]:
    """A capture record in the contract format; ``fields`` override the top-level keys, ``cohort``/``refused``/
    ``finish``/``headers`` the nested ones."""
    cohort, refused = fields.pop("cohort", None), fields.pop("refused", False)
    finish, headers = fields.pop("finish", "stop"), fields.pop("headers", {})
    return {
        "v": 1,
        "kind": "primary",
        "time": 1764570000.5,
        "request_id": rid,
        "instance": "gw-1",
        "policy_version": "3f2a",
        "endpoint": "chat",
        "content": "full",
        "request": body,
        "routing": {"model": "assistant", "user": "u-1", "metadata": {}, "headers": headers, "api_key": None},
        "outcome": {"cohort": cohort, "model": "base", "status": 200, "error": None, "attempts": ["base"]},
        "answer": {"finish_reason": finish, "refusal": refused, "tool_calls": [], "content": "ok"},
    } | fields


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return CLIENT | {"messages": [{"role": "user", "content": text}], "metadata": {"app": "web"}} | extra


def capture_lines() -> list[str]:
    json_object = {"type": "json_object"}
    records = [
        record(f"s{i}", chat(f"order {i} as JSON", response_format=json_object), cohort="structured") for i in range(6)
    ]
    records += [record(f"t{i}", chat(f"where is order {i}", tools=TOOLS), cohort="tool_required") for i in range(5)]
    records += [record(f"c{i}", chat(f"hello {i}", max_tokens=20), cohort="chat") for i in range(3)]
    records += [record(f"d{i}", chat(f"tell me about {i}"), cohort="chat", refused=i == 0) for i in range(3)]
    completions = CLIENT | {"prompt": ["Once upon a time"], "echo": False, "logprobs": 2}
    records.append(record("p0", completions, endpoint="completions", cohort=None))
    # a cohort the policy no longer has: classified again, from the captured headers
    billing = {"x-topic": "billing"}
    records += [record(f"b{i}", chat(f"my bill {i}"), cohort="old_billing", headers=billing) for i in range(3)]
    records += [
        record("r0", chat("5f3a9c"), content="redacted"),
        record("n0", None, content="none"),
        record("m0", chat("mirror copy"), kind="shadow", shadow={"reason": "mirror"}),
        record("e0", {"model": "embedder", "input": "hello"}, endpoint="embeddings"),
        record("x0", {"model": "assistant", "input": "hello"}, endpoint="responses"),
        record("s0", chat("a retry of s0 with another body"), cohort="structured"),  # duplicate: the first is kept
        record("w0", chat("hello"), answer={"refusal": "no"}),
    ]
    lines = [json.dumps(r) for r in records]
    lines.insert(4, '{"v": 1, "kind": "prim')  # a damaged line in the middle
    lines.append('{"v": 1, "kind": "primary", "request_id": "cut')  # a live file's last line, cut mid-write
    return lines


EXPECTED_SKIPS = {
    "not JSON": 2,
    "content redacted": 1,
    "content none": 1,
    "shadow": 1,
    "endpoint embeddings": 1,
    "endpoint responses": 1,
    "duplicate request id": 1,
    "wrong types": 1,
}


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines), encoding="utf-8")  # no final newline: the last line was cut
    return path


@pytest.fixture
def spec() -> Any:
    return parse_policy(POLICY).spec


def test_a_capture_becomes_cases(tmp_path: Path, spec: Any) -> None:
    path = write(tmp_path / "capture.jsonl", capture_lines())
    assert is_capture(path)
    load = load_capture(path, spec)
    assert dict(load.skipped) == EXPECTED_SKIPS
    by_id = {case.id: case for case in load.cases}
    assert len(by_id) == len(load.cases) == 21
    counts = {c: sum(1 for case in load.cases if case.cohort == c) for c in ("structured", "tool_required", "chat")}
    assert counts == {"structured": 6, "tool_required": 5, "chat": 7}
    assert {by_id[f"b{i}"].cohort for i in range(3)} == {"billing"}  # old_billing is gone: classified by header
    assert by_id["p0"].cohort == "chat"  # no cohort captured: classified (the default)
    assert by_id["s0"].body == {
        "messages": [{"role": "user", "content": "order 0 as JSON"}],
        "response_format": {"type": "json_object"},
    }
    assert by_id["p0"].body == {"messages": [{"role": "user", "content": "Once upon a time"}]}
    assert by_id["d0"].captured == LiveAnswer(refused=True, finish_reason="stop", model="base")
    assert by_id["c0"].expect.empty and by_id["c0"].context == ()
    assert [case.id for case in load.cases][:3] == ["s0", "s1", "s2"]  # file order
    assert by_id["s3"].line == 4 and by_id["s4"].line == 6  # the damaged line 5 counts: the file's numbers
    summary = load.summary("capture.jsonl")
    assert summary.startswith("capture.jsonl: 21 cases from 30 lines; skipped 2 not JSON, ")
    assert summary.endswith("(a live file's last line may be cut)")


def test_gzip_captures_read_the_same(tmp_path: Path, spec: Any) -> None:
    lines = capture_lines()
    plain = load_capture(write(tmp_path / "capture.jsonl", lines), spec)
    packed = tmp_path / "capture.jsonl.1.gz"
    packed.write_bytes(gzip.compress("\n".join(lines).encode()))
    assert is_capture(packed)
    unpacked = load_capture(packed, spec)
    assert unpacked.cases == plain.cases and unpacked.skipped == plain.skipped
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(packed.read_bytes()[:-200])  # a rotated file copied while it was written
    partial = load_capture(cut, spec)
    assert 0 < len(partial.cases) <= len(plain.cases)
    assert any(reason.startswith("unreadable rest of the file") for reason in partial.skipped)


def test_max_cases_keeps_a_deterministic_sample_in_file_order(tmp_path: Path, spec: Any) -> None:
    path = write(tmp_path / "capture.jsonl", capture_lines())
    everything = load_capture(path, spec).cases
    first, again = load_capture(path, spec, max_cases=7), load_capture(path, spec, max_cases=7)
    assert first.cases == again.cases and len(first.cases) == 7
    lowest = sorted(everything, key=lambda case: sample_key(case.id))[:7]
    assert {case.id for case in first.cases} == {case.id for case in lowest}
    assert [case.line for case in first.cases] == sorted(case.line for case in first.cases)
    assert first.skipped["sampled out (--max-cases)"] == 14
    assert sample(everything, 7) == first.cases  # a written dataset is sampled the same way


def test_an_overlong_line_is_skipped_and_the_next_one_read(tmp_path: Path, spec: Any) -> None:
    huge = json.dumps(record("big", chat("x" * MAX_LINE_BYTES), cohort="chat"))
    later = json.dumps(record("after", chat("hello"), cohort="chat"))
    newer = json.dumps(record("v2", chat("hello"), v=2))
    load = load_capture(write(tmp_path / "capture.jsonl", [later.replace("after", "before"), huge, later, newer]), spec)
    assert [case.id for case in load.cases] == ["before", "after"]
    assert dict(load.skipped) == {"over 1 MiB": 1, "unsupported version": 1}


def test_a_capture_without_full_records_is_refused(tmp_path: Path, spec: Any) -> None:
    lines = [json.dumps(record("r0", chat("5f3a"), content="redacted")), json.dumps(record("n0", None, content="none"))]
    with pytest.raises(DatasetError, match=r"capture content: full is required") as caught:
        load_capture(write(tmp_path / "capture.jsonl", lines), spec)
    assert "redacted and none records hold no prompt text" in str(caught.value)
    unusable = [json.dumps(record("e0", {"input": "hi"}, endpoint="embeddings")), json.dumps(record("q", {"n": 1}))]
    with pytest.raises(DatasetError, match=r"no usable case: .*1 endpoint embeddings, 1 not a usable request"):
        load_capture(write(tmp_path / "unusable.jsonl", unusable), spec)


def test_a_written_dataset_is_not_a_capture(tmp_path: Path) -> None:
    path = write(tmp_path / "cases.jsonl", ["# comment", '{"cohort": "chat", "prompt": "hi"}'])
    assert not is_capture(path) and not is_capture(tmp_path / "missing.jsonl")


def _answer(content: str | None, finish: str = "stop", refusal: str | None = None) -> FinishedAnswer:
    request = {"response_format": {"type": "json_object"}}
    return FinishedAnswer(request, content, (), finish, refusal, 0.1, 0.2, 3)


def test_captured_evaluators_apply_by_the_case_alone(tmp_path: Path, spec: Any) -> None:
    cases = {c.id: c for c in load_capture(write(tmp_path / "capture.jsonl", capture_lines()), spec).cases}
    not_truncated, no_refusal = CASE_EVALUATORS["not_truncated"], CASE_EVALUATORS["no_refusal"]
    assert not_truncated.applies(cases["d0"]) and not no_refusal.applies(cases["d0"])  # refused live
    assert no_refusal.applies(cases["d1"]) and "agreement" in REPORTED_ONLY
    written = Case("w", 1, "chat", cases["d1"].body, (), cases["d1"].expect)
    assert not not_truncated.applies(written) and not no_refusal.applies(written)
    assert agreement("base", _answer('{"a": 1}'), _answer('{"b": 2}'), None).verdict == "pass"
    broken = agreement("base", _answer('{"a": 1}'), _answer('{"a": 1', "length"), None)
    assert broken.verdict == "fail" and broken.reason == "differs from base on json_valid, finish_reason"
    assert agreement("base", None, _answer("{}"), None).verdict == "n/a"
    assert agreement("base", _answer("{}"), None, "timed out").reason == "no answer: timed out"


def run_cli(tmp_path: Path, capture: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    policy, profile = tmp_path / "policy.yaml", tmp_path / "sim.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    profile.write_text(SIM_PROFILE, encoding="utf-8")
    command = [sys.executable, "-m", "gateway", "eval", "--policy", str(policy), "--dataset", str(capture)]
    command += ["--candidate", "merged-v1", "--sim-profile", str(profile), "--out", str(tmp_path / "out"), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_eval_on_a_capture_scores_every_model_on_the_captured_prompts(tmp_path: Path) -> None:
    capture = write(tmp_path / "capture.jsonl", capture_lines())
    required = "json_valid,not_truncated,no_refusal"
    result = run_cli(tmp_path, capture, "--repeats", "2", "--min-cases", "1", "--require", required)
    assert result.returncode == 1, result.stderr
    summary = re.search(r"eval: capture .*: 21 cases from 30 lines; skipped (.*)", result.stderr)
    assert summary is not None, result.stderr
    for reason, count in EXPECTED_SKIPS.items():
        assert f"{count} {reason}" in summary.group(1)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    cohorts = {c["cohort"]: c for c in report["cohorts"]}
    assert {name: c["cases"] for name, c in cohorts.items()} == {
        "tool_required": 5,
        "structured": 6,
        "billing": 3,
        "chat": 7,
    }

    def counts(cohort: str, model: str, evaluator: str) -> tuple[int, int] | None:
        rate = cohorts[cohort]["models"][model]["evaluators"].get(evaluator)
        return None if rate is None else (rate["passed"], rate["failed"])

    structured = cohorts["structured"]
    assert structured["verdict"] == "held" and any(r.startswith("json_valid: ") for r in structured["reasons"])
    assert counts("structured", "merged-v1", "json_valid") == (0, 12)  # 6 cases x 2 repeats
    assert counts("structured", "source-a", "json_valid") == (12, 0)
    assert counts("structured", "source-b", "json_valid") == (0, 12)  # refuses
    # agreement with the incumbent source-a, which gets none itself
    assert counts("structured", "source-a", "agreement") is None
    assert counts("structured", "merged-v1", "agreement") == (0, 12)
    assert counts("structured", "source-b", "agreement") == (0, 12)
    assert counts("structured", "base", "agreement") == (12, 0)
    assert counts("tool_required", "merged-v1", "agreement") == (10, 0)  # the same tool, like source-a
    assert counts("tool_required", "source-b", "agreement") == (0, 10)
    # chat: the candidate is cut at max_tokens 20 where the 16-token baselines stop, and source-b always refuses
    assert counts("chat", "merged-v1", "not_truncated") == (8, 6)
    assert counts("chat", "base", "not_truncated") == (14, 0)
    assert counts("chat", "source-b", "no_refusal") == (0, 12)  # d0 was refused live: not counted
    assert counts("chat", "merged-v1", "no_refusal") == (12, 0)
    assert counts("chat", "base", "agreement") is None  # chat's incumbent
    merged_chat = counts("chat", "merged-v1", "agreement")
    assert merged_chat is not None and merged_chat[1] >= 6 and sum(merged_chat) == 14
    # billing is routed to the candidate: the reference is the first baseline
    assert counts("billing", "source-a", "agreement") is None
    assert sum(counts("billing", "base", "agreement") or ()) == 6
    answers = [json.loads(line) for line in (tmp_path / "out" / "cases.jsonl").read_text().splitlines()]
    assert len(answers) == 21 * 2 * 4
    cut = next(a for a in answers if a["case"] == "c0" and a["model"] == "merged-v1")
    assert cut["outcomes"]["agreement"] == {
        "verdict": "fail",
        "reason": "differs from base on finish_reason",
        "score": 0.5,  # finish_reason and length_ratio apply; one agrees
    }


def test_eval_refuses_a_capture_without_prompt_text_and_bad_flags(tmp_path: Path) -> None:
    redacted = write(tmp_path / "capture.jsonl", [json.dumps(record("r0", chat("5f3a"), content="redacted"))])
    result = run_cli(tmp_path, redacted)
    assert result.returncode == 2
    assert "capture content: full is required" in result.stderr
    assert not (tmp_path / "out").exists()
    capture = write(tmp_path / "full.jsonl", capture_lines())
    result = run_cli(tmp_path, capture, "--require", "json_valid,agreement")
    assert result.returncode == 2 and "--require: agreement is reported only" in result.stderr
    result = run_cli(tmp_path, capture, "--max-cases", "0")
    assert result.returncode == 2 and "--max-cases must be at least 1" in result.stderr
