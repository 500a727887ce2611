"""``llm-gateway replay`` on capture files written here in the capture format (docs/capture.md): the routing diff of
a policy edit, new errors, recorded split and rollout draws, fidelity notes and hostile lines."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.policy import load_policy
from gateway.replay.run import replay_files
from gateway.routing.planner import unit_hash

ROOT = Path(__file__).resolve().parent.parent
KEY = "sha256:" + "0" * 64

POLICY = """
version: 1
revision: replay-test
public_models: [assistant, assistant-beta]
models:
  base:       {kind: base,   backends: ["http://127.0.0.1:9001"]}
  specialist: {kind: source, backends: ["http://127.0.0.1:9002"]}
  merged:     {kind: merged, sources: [specialist, base], backends: ["http://127.0.0.1:9003"]}
  embedder:   {kind: embedding, backends: ["http://127.0.0.1:9004"]}
cohorts:
  - name: billing
    match: {header: {x-topic: billing}}
  - name: tools
    match: {has_tools: true}
  - name: other
    default: true
routes:
  billing: {target: merged, fallback: [specialist]}
  tools:   {target: specialist}
  other:   {target: base}
"""
"""Live, 6 billing (merged), 3 tools (specialist) and 11 other (base) requests of :func:`traffic` landed here."""


def edit(policy: str, old: str, new: str) -> str:
    assert old in policy, old
    return policy.replace(old, new)


def record(request_id: str, cohort: str | None, primary: str | None, **fields: Any) -> dict[str, Any]:
    """A primary record of the capture format; ``fields`` override ``routing`` keys, ``outcome`` keys (prefixed
    ``outcome_``) and top-level keys (``content``, ``request``, ``policy_version``, ``endpoint``, ``kind``)."""
    routing = {
        "model": "assistant",
        "user": None,
        "metadata": {},
        "headers": {},
        "api_key": None,
        "has_tools": False,
        "response_format": "text",
        "prompt_chars": 5,
        "max_tokens": None,
    }
    outcome = {
        "cohort": cohort,
        "rule": None,
        "route": cohort,
        "primary": primary,
        "model": primary,
        "attempts": [primary] if primary else [],
        "fallback": None,
        "status": 200,
        "error": None,
        "usage": None,
        "latency_s": 0.1,
        "ttft_s": 0.05,
        "split_u": None,
        "rollout": None,
        "pinned": False,
    }
    top = {"content": "none", "request": None, "policy_version": "unknown", "endpoint": "chat", "kind": "primary"}
    for name, value in fields.items():
        if name.startswith("outcome_"):
            outcome[name.removeprefix("outcome_")] = value
        elif name in top:
            top[name] = value
        else:
            assert name in routing, name
            routing[name] = value
    return {
        "v": 1,
        "time": 1.0,
        "request_id": request_id,
        "instance": "gw-1",
        **top,
        "routing": routing,
        "outcome": outcome,
    }


def traffic(**fields: Any) -> list[dict[str, Any]]:
    billing = [record(f"bill-{i}", "billing", "merged", headers={"x-topic": "billing"}, **fields) for i in range(6)]
    tools = [record(f"tool-{i}", "tools", "specialist", has_tools=True, **fields) for i in range(3)]
    other = [record(f"other-{i}", "other", "base", **fields) for i in range(11)]
    return billing + tools + other


def write(path: Path, lines: list[dict[str, Any] | bytes]) -> Path:
    data = b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def policy_file(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def replay(tmp_path: Path, records: list[dict[str, Any]], new: str, old: str | None = None) -> dict[str, Any]:
    capture = write(tmp_path / "capture.jsonl", list(records))
    baseline = load_policy(policy_file(tmp_path, old, "old.yaml")) if old is not None else None
    return replay_files([str(capture)], load_policy(policy_file(tmp_path, new, "new.yaml")), baseline)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "replay", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def side(cohort: str | None, model: str | None, status: int | None = None, error: str | None = None) -> dict[str, Any]:
    return {"cohort": cohort, "model": model, "status": status, "error": error}


MOVED = edit(POLICY, "billing: {target: merged, fallback: [specialist]}", "billing: {target: specialist}")


@pytest.mark.parametrize("against", ["live", "baseline"])
def test_moving_one_cohort_moves_exactly_its_requests(tmp_path: Path, against: str) -> None:
    report = replay(tmp_path, traffic(), MOVED, POLICY if against == "baseline" else None)
    assert (report["total"], report["changed"], report["changed_share"]) == (20, 6, 0.3)
    assert report["moves"] == [
        {
            "from": side("billing", "merged"),
            "to": side("billing", "specialist"),
            "count": 6,
            "share": 0.3,
            "inexact": 0,
            "examples": ["bill-0", "bill-1", "bill-2"],
        }
    ]
    assert report["new_errors"] == []
    assert report["baseline"] == ("live" if against == "live" else str(tmp_path / "old.yaml"))


def test_no_edit_changes_nothing_and_reproduces_every_record(tmp_path: Path) -> None:
    path = policy_file(tmp_path, POLICY)
    version = load_policy(path).version
    capture = write(tmp_path / "capture.jsonl", [*traffic(policy_version=version), record("x", "other", "base")])
    result = cli(str(capture), "--policy", str(path), "--max-changed", "0")
    assert result.returncode == 0, result.stderr
    assert "changed: 0 of 21 (0.00 %)" in result.stdout
    assert f"reproduced: 20 of 20 records captured under {path} (version {version})" in result.stdout


def test_max_changed_sets_the_exit_code(tmp_path: Path) -> None:
    capture = write(tmp_path / "capture.jsonl", list(traffic()))
    new = policy_file(tmp_path, MOVED)
    over = cli(str(capture), "--policy", str(new), "--max-changed", "0.29")
    assert over.returncode == 1, over.stderr
    assert "30.00% of requests changed, over --max-changed 29.00%" in over.stderr
    assert "billing / merged  ->  billing / specialist" in over.stdout
    at = cli(str(capture), "--policy", str(new), "--max-changed", "0.3")
    assert at.returncode == 0, at.stderr
    assert cli(str(capture), "--policy", str(new)).returncode == 0
    assert cli(str(capture), "--policy", str(new), "--max-changed", "1.5").returncode == 2


def test_json_output_has_the_contract_keys(tmp_path: Path) -> None:
    capture = write(tmp_path / "capture.jsonl", list(traffic()))
    old, new = policy_file(tmp_path, POLICY, "old.yaml"), policy_file(tmp_path, MOVED, "new.yaml")
    result = cli(str(capture), "--policy", str(new), "--baseline", str(old), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    keys = {"total", "changed", "changed_share", "moves", "new_errors", "reproduced", "not_reproducible", "skipped"}
    assert keys | {"baseline", "policy"} <= set(report)
    assert (report["baseline"], report["policy"]) == (str(old), str(new))
    assert set(report["moves"][0]) >= {"from", "to", "count", "share", "examples"}
    assert set(report["skipped"]) >= {"invalid", "shadow", "first_invalid_lines"}
    assert set(report["reproduced"]) >= {"checked", "matched"}


KEYED = (
    POLICY
    + f"""
keys:
  frontend: {{key: "{KEY}", models: [assistant]}}
  batch:    {{key: "{KEY}", cohorts: [other, tools]}}
  legacy:   {{key: "{KEY}"}}
"""
)


def test_new_errors_for_a_key_allow_list_and_a_token_limit(tmp_path: Path) -> None:
    records = [
        *(record(f"front-{i}", "other", "base", api_key="frontend") for i in range(4)),
        *(record(f"batch-{i}", "tools", "specialist", api_key="batch", has_tools=True) for i in range(2)),
        *(
            record(f"long-{i}", "tools", "specialist", api_key="legacy", has_tools=True, max_tokens=500)
            for i in range(3)
        ),
        *(
            record(f"short-{i}", "tools", "specialist", api_key="legacy", has_tools=True, max_tokens=50)
            for i in range(1)
        ),
    ]
    new = edit(KEYED, "models: [assistant]}", "models: [assistant-beta]}")
    new = edit(new, "cohorts: [other, tools]}", "cohorts: [other]}")
    new = edit(new, "tools:   {target: specialist}", "tools:   {target: specialist, max_tokens: 100}")
    report = replay(tmp_path, records, new, KEYED)
    assert report["changed"] == 9
    assert report["new_errors"] == [  # grouped by (status, code): both allow-lists give 403 permission_denied
        {
            "status": 403,
            "code": "permission_denied",
            "count": 6,
            "share": 0.6,
            "examples": ["front-0", "front-1", "front-2"],
        },
        {
            "status": 400,
            "code": "invalid_request_error",
            "count": 3,
            "share": 0.3,
            "examples": ["long-0", "long-1", "long-2"],
        },
    ]
    moves = {(m["from"]["cohort"], m["to"]["cohort"], m["to"]["status"]): m["count"] for m in report["moves"]}
    assert moves == {("other", None, 403): 4, ("tools", "tools", 403): 2, ("tools", "tools", 400): 3}


def test_unknown_model_removed_key_and_wrong_kind_are_replayed(tmp_path: Path) -> None:
    records = [
        record("beta", "other", "base", model="assistant-beta", api_key="open"),
        record("legacy", "other", "base", api_key="legacy"),
        record("embed", "other", "embedder", endpoint="embeddings", api_key="open"),
        record("chat", "other", "base", api_key="open"),
    ]
    old = edit(POLICY, "other:   {target: base}", "other:   {target: base, fallback: [embedder]}")
    old += f'keys:\n  open: {{key: "{KEY}"}}\n  legacy: {{key: "{KEY}"}}\n'
    new = edit(old, "public_models: [assistant, assistant-beta]", "public_models: [assistant]")
    new = edit(new, f'  legacy: {{key: "{KEY}"}}\n', "")
    new = edit(new, "{target: base, fallback: [embedder]}", "{target: base}")
    report = replay(tmp_path, records, new, old)
    errors = {e["examples"][0]: (e["status"], e["code"], e["count"]) for e in report["new_errors"]}
    assert errors == {
        "beta": (404, "model_not_found", 1),
        "legacy": (401, "invalid_api_key", 1),
        "embed": (400, "invalid_request_error", 1),
    }
    assert report["changed"] == 3


SPLIT = edit(POLICY, "other:   {target: base}", "other:   {split: {base: 50, merged: 50}}")


def test_a_recorded_split_draw_lands_on_the_same_arm(tmp_path: Path) -> None:
    draws = [0.05, 0.2, 0.45, 0.55, 0.8, 0.95] * 5
    records = [
        record(f"r{i}", "other", "base" if u < 0.5 else "merged", outcome_split_u=u) for i, u in enumerate(draws)
    ]
    assert replay(tmp_path, records, SPLIT)["changed"] == 0
    reweighted = edit(SPLIT, "{base: 50, merged: 50}", "{base: 10, merged: 90}")
    report = replay(tmp_path, records, reweighted, SPLIT)
    assert report["changed"] == 10  # 0.2 and 0.45: on base under 50/50, on merged under 10/90
    assert report["moves"][0]["from"] == side("other", "base")
    assert report["moves"][0]["to"] == side("other", "merged")


ROLLOUT = edit(
    POLICY, "other:   {target: base}", "other:   {target: base, rollout: {candidate: merged, steps: [10, 50]}}"
)


def test_a_rollout_replays_at_its_recorded_weight(tmp_path: Path) -> None:
    version = load_policy(policy_file(tmp_path, ROLLOUT, "new.yaml")).version
    records = []
    for i in range(60):
        rid = f"roll-{i}"
        on_candidate = unit_hash(f"rollout:other:merged:request:{rid}") * 100 < 50
        rollout = {"candidate": "merged", "weight": 50.0}
        primary = "merged" if on_candidate else "base"
        records.append(record(rid, "other", primary, outcome_rollout=rollout, policy_version=version))
    between = [r for r in records if 10 <= unit_hash(f"rollout:other:merged:request:{r['request_id']}") * 100 < 50]
    assert between, "some requests must be on the candidate at 50 % and not at the first step (10 %)"
    report = replay(tmp_path, records, ROLLOUT)
    assert report["changed"] == 0
    assert report["reproduced"]["checked"] == report["reproduced"]["matched"] == 60


REFUNDS = edit(POLICY, "  - name: other\n", '  - name: refunds\n    match: {content: "(?i)refund"}\n  - name: other\n')


def redacted(text: str) -> str:
    digest = hashlib.blake2b(text.encode(), person=b"llm-gw-capture").hexdigest()
    return (digest * (len(text) // len(digest) + 1))[: len(text)]


def test_content_regexes_need_full_content(tmp_path: Path) -> None:
    text = "I want a refund please"

    def body(content: str) -> dict[str, Any]:
        return {"model": "assistant", "messages": [{"role": "user", "content": content}]}

    version = load_policy(policy_file(tmp_path, REFUNDS, "new.yaml")).version  # x-topic: kept by the capture
    records = [
        *(record(f"full-{i}", "refunds", "base", content="full", request=body(text)) for i in range(3)),
        *(record(f"red-{i}", "refunds", "base", content="redacted", request=body(redacted(text))) for i in range(2)),
        *(record(f"none-{i}", "refunds", "base", prompt_chars=len(text)) for i in range(4)),
    ]
    records = [{**r, "policy_version": version} for r in records]
    report = replay(tmp_path, records, REFUNDS)
    assert report["not_reproducible"] == [
        {
            "kind": "content",
            "policy": "new",
            "path": str(tmp_path / "new.yaml"),
            "cohorts": ["refunds"],
            "records": 6,
            "classified_past": 6,
            "why": "content regexes need capture content: full",
        }
    ]
    assert report["moves"] == [
        {
            "from": side("refunds", "base"),
            "to": side("other", "base"),
            "count": 6,
            "share": 0.666667,
            "inexact": 6,
            "examples": ["red-0", "red-1", "none-0"],
        }
    ]
    assert any("content regexes need capture content: full" in note for note in report["notes"])
    reproduced = report["reproduced"]
    assert (reproduced["checked"], reproduced["matched"], reproduced["not_checked"]["inexact"]) == (3, 3, 6)
    without_regex = replay(tmp_path, records, POLICY, POLICY)["not_reproducible"]
    assert [item["kind"] for item in without_regex] == ["header", "header"]  # x-topic, for want of its version


SEMANTIC = edit(
    POLICY,
    "  - name: other\n",
    '  - name: refunds\n    match: {semantic: {model: embedder, examples: ["I want my money back"]}}\n'
    "  - name: other\n",
)


def test_semantic_rules_are_reported_as_needing_text_and_an_embedder(tmp_path: Path) -> None:
    body = {"model": "assistant", "messages": [{"role": "user", "content": "give my money back"}]}
    records = [record("full", "refunds", "base", content="full", request=body), record("none", "refunds", "base")]
    report = replay(tmp_path, records, SEMANTIC)
    gaps = {item["kind"]: item for item in report["not_reproducible"] if item["kind"] != "header"}
    assert gaps["content"]["why"] == "semantic rules need capture content: full"
    assert (gaps["content"]["cohorts"], gaps["content"]["records"]) == (["refunds"], 1)
    assert gaps["embedding"]["records"] == 2  # with the text too: replay never calls an embedder
    assert report["moves"][0]["from"] == side("refunds", "base")


def test_a_header_no_record_kept_is_reported(tmp_path: Path) -> None:
    reads_lang = edit(
        POLICY, "  - name: other\n", "  - name: german\n    match: {header: {x-lang: de}}\n  - name: other\n"
    )
    report = replay(tmp_path, traffic(), reads_lang, POLICY)
    assert [(n["kind"], n["header"], n["records"]) for n in report["not_reproducible"]] == [("header", "x-lang", 20)]
    kept = [record("de", "german", "base", headers={"x-lang": "de"}), *traffic()]
    assert replay(tmp_path, kept, reads_lang, POLICY)["not_reproducible"] == []


def test_hostile_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    good = record("good", "other", "base")
    lines: list[dict[str, Any] | bytes] = [
        good,
        b"not json",
        b"[1, 2]",
        {**good, "v": 2},
        {**good, "kind": "shadow"},
        {**good, "routing": {**good["routing"], "has_tools": "yes"}},
        b'{"v": 1, "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}',
        b"",
        {**good, "request_id": "good-2"},
    ]
    for name in ("capture.jsonl", "capture.jsonl.gz"):
        capture = write(tmp_path / name, lines)
        report = replay_files([str(capture)], load_policy(policy_file(tmp_path, POLICY)))
        assert report["total"] == 2
        skipped = report["skipped"]
        assert (skipped["invalid"], skipped["shadow"]) == (5, 1)
        assert [(bad["line"], bad["why"]) for bad in skipped["first_invalid_lines"]] == [
            (2, "not JSON"),
            (3, "not a JSON object"),
            (4, "unknown record version 2"),
            (6, "has_tools: a boolean expected"),
            (7, "line longer than 1048576 bytes"),
        ]
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes((tmp_path / "capture.jsonl.gz").read_bytes()[:-30])
    report = replay_files([str(truncated)], load_policy(tmp_path / "policy.yaml"))
    assert report["skipped"]["first_invalid_lines"][-1]["why"].startswith("unreadable from here on")
    only_bad = write(tmp_path / "bad.jsonl", [b"nope", {**good, "kind": "shadow"}])
    result = cli(str(only_bad), "--policy", str(tmp_path / "policy.yaml"))
    assert result.returncode == 2
    assert "no primary record to compare" in result.stderr
    assert "Traceback" not in result.stderr


def test_reproduced_counts_records_of_the_baseline_version(tmp_path: Path) -> None:
    version = load_policy(policy_file(tmp_path, POLICY, "old.yaml")).version
    records = traffic(policy_version=version)
    records[0]["outcome"]["primary"] = "base"  # a record the replay does not reproduce
    records.append(record("other-version", "billing", "merged", policy_version="elsewhere/0"))
    report = replay(tmp_path, records, MOVED, POLICY)
    reproduced = report["reproduced"]
    assert (reproduced["checked"], reproduced["matched"], reproduced["version"]) == (20, 19, version)
    assert reproduced["mismatches"] == [
        {"request_id": "bill-0", "recorded": side("billing", "base"), "replayed": side("billing", "merged")}
    ]


def test_bad_invocations_exit_2(tmp_path: Path) -> None:
    capture = write(tmp_path / "capture.jsonl", list(traffic()))
    broken = policy_file(tmp_path, edit(POLICY, "tools:   {target: specialist}", "tools:   {target: specialst}"))
    result = cli(str(capture), "--policy", str(broken))
    assert result.returncode == 2
    assert f"{broken}:" in result.stderr and "unknown model 'specialst'" in result.stderr
    missing = cli(str(tmp_path / "nope.jsonl"), "--policy", str(policy_file(tmp_path, POLICY, "ok.yaml")))
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr
