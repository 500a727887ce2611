"""The promotion gate end to end: real simulators on loopback ports, the real CLI, the files it writes.

The simulators make the candidate better on one cohort (its sources and the base model break JSON half the time)
and worse on another (it breaks tool calls), and the third cohort has too few cases to decide.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.cli import main
from gateway.policy import load_policy
from gateway.sim import ModelProfile, SimProfile
from tests.harness import Stack

POLICY = """
version: 1
public_models: [assistant]
models:
  base:        {kind: base, backends: ["${base}"], served_name: base-7b}
  source-a:    {kind: source, backends: ["${src}"]}
  source-b:    {kind: source, backends: ["${src}"]}
  merged-v1:   {kind: merged, sources: [source-a, source-b], backends: ["${merged}"]}
  judge-model: {kind: candidate, backends: ["${judge}"]}
cohorts:
  - {name: tool_required, match: {has_tools: true}}
  - {name: structured, match: {response_format: [json_object, json_schema]}}
  - {name: chat, default: true}
routes:
  tool_required: {target: source-a, fallback: [base]}
  structured:    {target: source-b, fallback: [source-a, base]}
  chat:          {target: base}
evals:
  # 30 cases: a 100 % vs 100 % tie has a lower bound of -11.4 % at 95 %, and of -18.8 % at the strictest Holm
  # level of the run's 6 required comparisons (paired intervals do not help a tie at 100 %: nothing to correlate)
  promotion: {tolerance: 0.2}
"""
SIMS = {"base": ["base-7b"], "src": ["source-a", "source-b"], "merged": ["merged-v1"], "judge": ["judge-model"]}
PROFILE = SimProfile(
    models={
        "merged-v1": ModelProfile(malformed_tool_call_rate=0.6),
        "source-a": ModelProfile(invalid_json_rate=0.5),
        "source-b": ModelProfile(invalid_json_rate=0.5),
        "base-7b": ModelProfile(invalid_json_rate=0.5),
    }
)
TOKEN = "promote-token"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
        },
    },
    {"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}},
]


def dataset_lines(structured: int = 30, tools: int = 30, chat: int = 5) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for i in range(structured):
        lines.append(
            {
                "id": f"s{i}",
                "cohort": "structured",
                "messages": [{"role": "user", "content": f"order {i} as JSON"}],
                "response_format": {"type": "json_object"},
                "expect": {"refusal": False},
            }
        )
    for i in range(tools):
        lines.append(
            {"id": f"t{i}", "cohort": "tool_required", "prompt": f"where is order {i}", "tools": TOOLS}
            | {"expect": {"tool_name": "lookup_order"}}
        )
    for i in range(chat):
        lines.append(
            {"id": f"c{i}", "cohort": "chat", "prompt": "hello there", "context": ["hello there friend"]}
            | {"expect": {"refusal": False}}
        )
    return lines


def write_dataset(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    os.environ["GATEWAY_ADMIN_TOKEN"] = TOKEN
    try:
        with Stack(POLICY, SIMS, sim_profile=PROFILE) as running:
            yield running
    finally:
        del os.environ["GATEWAY_ADMIN_TOKEN"]


@pytest.fixture
def sims(stack: Stack) -> Stack:
    stack.reset()
    return stack


def run_eval(stack: Stack, dataset: Path, out: Path, *extra: str, policy: Path | None = None) -> int:
    argv = ["eval", "--policy", str(policy or stack.policy_path), "--dataset", str(dataset)]
    argv += ["--candidate", "merged-v1", "--out", str(out), "--concurrency", "16", *extra]
    return main(argv)


@pytest.fixture(scope="module")
def full_run(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, Stack]:
    stack.reset()
    folder = tmp_path_factory.mktemp("promote")
    dataset = write_dataset(folder / "data.jsonl", dataset_lines())
    code = run_eval(stack, dataset, folder / "out")
    return code, folder / "out", stack


def test_verdicts_follow_the_simulated_quality(full_run: tuple[int, Path, Stack]) -> None:
    code, out, _ = full_run
    report = json.loads((out / "report.json").read_text())
    verdicts = {c["cohort"]: (c["verdict"], c["reasons"]) for c in report["cohorts"]}
    assert verdicts["structured"] == ("earned", [])
    assert verdicts["tool_required"][0] == "held"
    assert any(r.startswith("tool_call_valid: ") for r in verdicts["tool_required"][1])
    assert verdicts["chat"] == ("held", ["only 5 cases (min_cases 20)"])
    assert report["earned"] == ["structured"] and report["held"] == ["tool_required", "chat"]
    assert report["baselines"] == ["source-a", "source-b", "base"]
    assert code == 1 and report["exit_code"] == 1
    structured = next(c for c in report["cohorts"] if c["cohort"] == "structured")
    candidate = structured["models"]["merged-v1"]["evaluators"]["json_valid"]
    assert candidate["passed"] == 30 and candidate["failed"] == 0
    low, high = candidate["ci"]
    assert 0.85 < low < 1.0 and high == 1.0
    for baseline in ("source-a", "source-b", "base"):
        assert 0 < structured["models"][baseline]["evaluators"]["json_valid"]["rate"] < 0.85
    json_valid = next(c for c in structured["comparisons"] if c["evaluator"] == "json_valid")
    assert json_valid["required"] and json_valid["within_tolerance"] and json_valid["delta"] > 0.1
    latency = structured["models"]["merged-v1"]["latency_s"]
    assert latency["ttft_p95"] is not None and latency["total_p95"] >= latency["ttft_p95"]
    assert structured["models"]["merged-v1"]["tokens"]["completion_mean"] > 0


def test_proposed_policy_routes_exactly_the_earned_cohort(full_run: tuple[int, Path, Stack]) -> None:
    _, out, stack = full_run
    proposed_path = out / "policy.proposed.yaml"
    assert main(["check", str(proposed_path)]) == 0
    proposed = load_policy(proposed_path).spec
    original = load_policy(stack.policy_path).spec
    assert proposed.routes["structured"].target == "merged-v1"
    assert proposed.routes["structured"].fallback == ["source-b", "source-a", "base"]
    for held in ("tool_required", "chat"):
        route, before = proposed.routes[held], original.routes[held]
        assert route.target == before.target and route.fallback == before.fallback
        assert route.mirror is not None and route.mirror.to == ["merged-v1"] and route.mirror.sample == 0.1
    serving = {name for name, route in proposed.routes.items() if route.target == "merged-v1"}
    assert serving == {"structured"}
    assert proposed.models == original.models and proposed.cohorts == original.cohorts
    [gate] = proposed.evals.gates
    assert gate.models == ["merged-v1"] and gate.cohorts == ["structured"]
    assert set(gate.evaluators) == {"non_empty", "json_valid"}


def test_report_files_exist_and_parse(full_run: tuple[int, Path, Stack]) -> None:
    _, out, _ = full_run
    lines = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(lines) == 65 * 4  # every case against the candidate and three baselines
    assert {line["model"] for line in lines} == {"merged-v1", "source-a", "source-b", "base"}
    tool_answer = next(x for x in lines if x["case"] == "t0" and x["model"] == "source-a")
    assert tool_answer["tool_calls"][0]["name"] == "lookup_order"
    assert tool_answer["outcomes"]["tool_selection"]["verdict"] == "pass"
    assert "groundedness_overlap" in next(x for x in lines if x["case"] == "c0")["outcomes"]
    markdown = (out / "report.md").read_text()
    assert "## structured: EARNED" in markdown and "## tool_required: HELD" in markdown
    assert "| **merged-v1** | 100% (30/30," in markdown
    png = (out / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_asking_only_for_the_earned_cohort_exits_0(sims: Stack, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl", dataset_lines())
    assert run_eval(sims, dataset, tmp_path / "out", "--cohorts", "structured") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["earned"] == ["structured"] and report["held"] == []
    asked = {c["cohort"]: c["asked"] for c in report["cohorts"]}
    assert asked == {"tool_required": False, "structured": True, "chat": False}
    proposed = load_policy(tmp_path / "out" / "policy.proposed.yaml").spec
    assert proposed.routes["tool_required"].mirror is None  # not asked: unchanged


def test_a_bad_dataset_line_fails_with_its_number(
    sims: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [json.dumps(line) for line in dataset_lines(structured=2, tools=0, chat=0)]
    lines.insert(2, '{"cohort": "structured", "prompt": "x", "expect": {"contians": "typo"}}')
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("\n".join(lines) + "\n")
    assert run_eval(sims, dataset, tmp_path / "out") == 2
    assert f"{dataset}:3: expect.contians: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert sims.stats("src")["models"]["source-a"]["requests"] == 0  # refused before any request


def test_usage_errors_exit_2(sims: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl", dataset_lines(structured=1, tools=0, chat=0))
    assert run_eval(sims, dataset, tmp_path / "a", "--baselines", "sorce-a") == 2
    assert "--baselines: unknown model 'sorce-a' (did you mean 'source-a'?)" in capsys.readouterr().err
    assert run_eval(sims, dataset, tmp_path / "b", "--cohorts", "structurd") == 2
    assert "unknown cohort 'structurd'" in capsys.readouterr().err
    assert run_eval(sims, dataset, tmp_path / "c", "--tolerance", "1.5") == 2
    assert "tolerance" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["eval", "--policy", str(sims.policy_path), "--candidate", "merged-v1"])
    assert exited.value.code == 2


def test_latency_bound_holds_an_otherwise_earned_cohort(sims: Stack, tmp_path: Path) -> None:
    sims.configure("merged", {"model": "merged-v1", "set": {"ttft_s": 0.05}})
    dataset = write_dataset(tmp_path / "data.jsonl", dataset_lines(tools=0, chat=0))
    code = run_eval(sims, dataset, tmp_path / "out", "--max-p95-ttft-s", "0.03", "--max-latency-ratio", "100")
    assert code == 1
    [cohort] = json.loads((tmp_path / "out" / "report.json").read_text())["cohorts"]
    assert cohort["verdict"] == "held"
    [reason] = cohort["reasons"]
    assert reason.startswith("p95 TTFT ") and reason.endswith("s over the 0.03s bound")
    assert float(reason.split()[2].removesuffix("s")) >= 0.05
    assert cohort["models"]["merged-v1"]["latency_s"]["ttft_p95"] >= 0.05


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_transport_failures_are_retried_on_another_replica_and_4xx_is_final(sims: Stack, tmp_path: Path) -> None:
    policy = yaml.safe_load(sims.policy_path.read_text())
    policy["models"]["merged-v1"]["backends"].append(f"http://127.0.0.1:{_closed_port()}")
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy))
    lines = dataset_lines(tools=0, chat=0)
    lines[0]["max_tokens"] = 100_000  # over every model's max_model_len: vLLM's 400, not retried
    dataset = write_dataset(tmp_path / "data.jsonl", lines)
    run_eval(sims, dataset, tmp_path / "out", "--retries", "1", "--concurrency", "32", policy=policy_path)
    answers = [json.loads(line) for line in (tmp_path / "out" / "cases.jsonl").read_text().splitlines()]
    merged = [a for a in answers if a["model"] == "merged-v1"]
    assert sum(1 for a in merged if a["attempts"] == 2) == 15  # every other request hit the dead replica first
    too_long = [a for a in answers if a["case"] == "s0"]
    assert all(a["attempts"] in (1, 2) and "400" in a["error"] and not a["transport_error"] for a in too_long)
    assert all(a["error"] is None for a in answers if a["case"] != "s0")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["cohorts"][0]["models"]["source-a"]["errors"] == 1
    assert report["cohorts"][0]["models"]["source-a"]["transport_errors"] == 0
    assert report["cohorts"][0]["verdict"] == "earned"


def test_an_unreachable_baseline_is_no_evidence(sims: Stack, tmp_path: Path) -> None:
    policy = yaml.safe_load(sims.policy_path.read_text())
    policy["models"]["base"]["backends"] = [f"http://127.0.0.1:{_closed_port()}"]
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy))
    dataset = write_dataset(tmp_path / "data.jsonl", dataset_lines(tools=0, chat=0))
    assert run_eval(sims, dataset, tmp_path / "out", "--retries", "0", policy=policy_path) == 1
    [cohort] = json.loads((tmp_path / "out" / "report.json").read_text())["cohorts"]
    assert cohort["reasons"] == ["baseline base: 30 requests failed in transport after retries, so no evidence"]


def test_push_fills_the_gateway_eval_windows(sims: Stack, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl", dataset_lines(tools=0, chat=0))
    assert run_eval(sims, dataset, tmp_path / "out", "--push", sims.url) == 0
    state = httpx.get(f"{sims.url}/admin/state", headers={"authorization": f"Bearer {TOKEN}"}).json()
    windows = {(w["model"], w["cohort"], w["evaluator"]): w for w in state["evals"]["windows"]}
    pushed = windows[("merged-v1", "structured", "json_valid")]
    assert pushed["outcomes"] == 30 and pushed["fail_rate"] == 0.0
    baseline = windows[("source-a", "structured", "json_valid")]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    failed = report["cohorts"][0]["models"]["source-a"]["evaluators"]["json_valid"]["failed"]
    assert baseline["outcomes"] == 30 and baseline["fail_rate"] == pytest.approx(failed / 30, abs=1e-3)
    assert ("merged-v1", "structured", "task_completion") in windows


def test_push_needs_the_admin_token(sims: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl", dataset_lines(structured=1, tools=0, chat=0))
    del os.environ["GATEWAY_ADMIN_TOKEN"]
    try:
        assert run_eval(sims, dataset, tmp_path / "out", "--push", sims.url) == 2
    finally:
        os.environ["GATEWAY_ADMIN_TOKEN"] = TOKEN
    assert "GATEWAY_ADMIN_TOKEN" in capsys.readouterr().err


def test_judge_grades_every_answer_through_its_backend(sims: Stack, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data.jsonl", dataset_lines(structured=0, tools=0, chat=6))
    run_eval(sims, dataset, tmp_path / "out", "--judge", "judge-model", "--min-cases", "5")
    assert sims.requests_to("judge", "judge-model") == 6 * 4
    [cohort] = json.loads((tmp_path / "out" / "report.json").read_text())["cohorts"]
    for model in ("merged-v1", "source-a", "source-b", "base"):
        rates = cohort["models"][model]["evaluators"]
        assert rates["groundedness"]["passed"] + rates["groundedness"]["failed"] == 6
        assert rates["helpfulness"]["passed"] + rates["helpfulness"]["failed"] == 6
    required = {c["evaluator"]: c["required"] for c in cohort["comparisons"]}
    assert required["helpfulness"] is False and required["refusal_correct"] is True
    answers = [json.loads(line) for line in (tmp_path / "out" / "cases.jsonl").read_text().splitlines()]
    assert all(a["outcomes"]["helpfulness"]["reason"].startswith("judge judge-model: ") for a in answers)


def test_a_stream_cut_midway_is_a_transport_failure(sims: Stack, tmp_path: Path) -> None:
    sims.configure("merged", {"model": "merged-v1", "set": {"stream_cut_after": 1}})
    dataset = write_dataset(tmp_path / "data.jsonl", dataset_lines(structured=20, tools=0, chat=0))
    assert run_eval(sims, dataset, tmp_path / "out", "--retries", "1") == 1
    answers = [json.loads(line) for line in (tmp_path / "out" / "cases.jsonl").read_text().splitlines()]
    merged = [a for a in answers if a["model"] == "merged-v1"]
    assert len(merged) == 20
    assert all(
        a["error"] == "the backend's answer was cut short (or its framing was broken) (after 2 attempts)"
        for a in merged
    )
    assert all(a["transport_error"] and a["attempts"] == 2 for a in merged)
    assert sims.requests_to("merged", "merged-v1") == 40
    [cohort] = json.loads((tmp_path / "out" / "report.json").read_text())["cohorts"]
    assert cohort["models"]["merged-v1"]["evaluators"]["json_valid"]["failed"] == 20


def test_backend_keys_come_from_the_environment(
    sims: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.promote.backends import SimBackends, endpoint_for

    policy = yaml.safe_load(sims.policy_path.read_text())
    policy["models"]["source-a"]["api_key"] = "env:PROMOTE_TEST_BACKEND_KEY"
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy))
    dataset = write_dataset(tmp_path / "data.jsonl", dataset_lines(structured=1, tools=0, chat=0))
    assert run_eval(sims, dataset, tmp_path / "out", policy=policy_path) == 2
    assert "model 'source-a': api_key env:PROMOTE_TEST_BACKEND_KEY is unset or empty" in capsys.readouterr().err
    spec = load_policy(policy_path).spec
    os.environ["PROMOTE_TEST_BACKEND_KEY"] = "sk-backend"
    try:
        endpoint = endpoint_for(spec, "source-a", SimBackends(SimProfile()))
    finally:
        del os.environ["PROMOTE_TEST_BACKEND_KEY"]
    assert endpoint.authorization == "Bearer sk-backend" and endpoint.served_name == "source-a"
    assert endpoint_for(spec, "base", SimBackends(SimProfile())).served_name == "base-7b"
