"""Replay speed: how long ``llm-gateway replay`` takes over a capture of 100,000 records.

The capture is synthetic but shaped like a real one: chat requests of every cohort of
``routing_policies/merged-rollout.yaml`` (tools, JSON output, a billing header, refund text, the rest), each with
the outcome the gateway's own classifier and planner give it under that policy, so the replay also checks that it
reproduces them. Content is mixed: 45 % ``redacted`` (the body with every text replaced by a same-length hash),
45 % ``none`` (routing view only), 10 % ``full``. The new policy moves ``billing_refund`` to the specialist and splits
``out_of_domain`` 90/10 with ``merged-v1``, so the run has moves to count.

Timed: the in-process replay (``gateway.replay.run.replay_files``) against the live outcomes and against the old
policy, and the CLI (``python -m gateway replay … --baseline … --json``, start-up included): wall time and CPU
time, the steadier figure on a machine shared with other work. One core: the replay is a single thread.

Run: ``.venv/bin/python loadtests/replay_bench.py [--records N] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.policy import load_policy
from gateway.replay.run import replay_files
from gateway.routing.cohorts import CohortClassifier
from gateway.routing.features import RequestFeatures
from gateway.routing.planner import Planner

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "routing_policies" / "merged-rollout.yaml"
EDITS = [
    (
        "billing_refund:    {target: merged-v1, fallback: [billing-specialist, base]}",
        "billing_refund:    {target: billing-specialist, fallback: [base]}",
    ),
    (
        "out_of_domain:     {target: base,",
        "out_of_domain:     {split: {base: 90, merged-v1: 10},",
    ),
]
KEPT = frozenset({"model", "user", "metadata", "role", "type", "name", "response_format", "id"})
WORDS = "account invoice order shipping password delivery address plan upgrade question hello thanks".split()


def redact(value: Any) -> Any:
    """The contract's ``content: redacted``: every string outside the kept keys → a same-length hash string."""
    if isinstance(value, str):
        digest = hashlib.blake2b(value.encode(), person=b"llm-gw-capture").hexdigest()
        return (digest * (len(value) // len(digest) + 1))[: len(value)]
    if isinstance(value, dict):
        return {k: v if k in KEPT else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def request(rng: random.Random, i: int) -> tuple[dict[str, Any], dict[str, str]]:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 120)))
    body: dict[str, Any] = {
        "model": "support-assistant",
        "user": f"u-{i % 500}",
        "messages": [
            {"role": "system", "content": "You are a helpful support assistant. " * 8},
            {"role": "user", "content": text},
        ],
        "max_tokens": 256,
    }
    headers: dict[str, str] = {}
    kind = rng.random()
    if kind < 0.15:
        body["tools"] = [{"type": "function", "function": {"name": "get_invoice", "parameters": {}}}]
    elif kind < 0.25:
        body["response_format"] = {"type": "json_object"}
    elif kind < 0.40:
        headers["x-topic"] = "billing"
    elif kind < 0.50:
        body["messages"][1]["content"] = "I want a refund for " + text
    return body, headers


def generate(path: Path, records: int, seed: int = 7) -> None:
    policy = load_policy(BASELINE)
    classifier, planner = CohortClassifier(policy.spec), Planner(policy.spec)
    rng = random.Random(seed)
    with path.open("wb") as out:
        for i in range(records):
            body, headers = request(rng, i)
            features = RequestFeatures(body, headers)
            decision = classifier.classify(features)
            plan = planner.plan(decision.cohort, features, f"req-{i}")
            content = "redacted" if i % 20 < 9 else "none" if i % 20 < 18 else "full"
            record = {
                "v": 1,
                "kind": "primary",
                "time": 1_764_570_000 + i / 100,
                "request_id": f"req-{i}",
                "instance": "gw-1",
                "policy_version": policy.version,
                "endpoint": "chat",
                "content": content,
                "request": None if content == "none" else body if content == "full" else redact(body),
                "routing": {
                    "model": body["model"],
                    "user": body["user"],
                    "metadata": {},
                    "headers": headers,
                    "api_key": None,
                    "has_tools": features.has_tools,
                    "response_format": features.response_format,
                    "prompt_chars": features.prompt_chars,
                    "max_tokens": body["max_tokens"],
                },
                "outcome": {
                    "cohort": decision.cohort,
                    "rule": decision.rule,
                    "route": plan.route,
                    "primary": plan.primary,
                    "model": plan.primary,
                    "attempts": [plan.primary],
                    "fallback": None,
                    "status": 200,
                    "error": None,
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20},
                    "latency_s": 0.5,
                    "ttft_s": 0.1,
                    "split_u": plan.split_u,
                    "rollout": None,
                    "pinned": False,
                },
            }
            out.write(orjson.dumps(record) + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="write the capture and the new policy here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        capture, new_path = where / "capture.jsonl", where / "new.yaml"
        text = BASELINE.read_text()
        for old, new in EDITS:
            assert old in text, old
            text = text.replace(old, new)
        new_path.write_text(text)
        started = time.perf_counter()
        generate(capture, args.records)
        size = capture.stat().st_size / 1e6
        print(f"generated {args.records} records ({size:.1f} MB) in {time.perf_counter() - started:.1f} s")
        new, old = load_policy(new_path), load_policy(BASELINE)
        for label, baseline in (("in-process, against live", None), ("in-process, --baseline", old)):
            started, cpu = time.perf_counter(), time.process_time()
            report = replay_files([str(capture)], new, baseline)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            reproduced = report["reproduced"]
            print(
                f"{label:28} {elapsed:6.2f} s  {args.records / elapsed:9,.0f} records/s  (CPU {cpu:.2f} s)  "
                f"changed {report['changed_share']:.2%}  reproduced {reproduced['matched']}/{reproduced['checked']}"
            )
        command = [sys.executable, "-m", "gateway", "replay", str(capture), "--policy", str(new_path)]
        command += ["--baseline", str(BASELINE), "--json"]
        started, children = time.perf_counter(), os.times()
        done = subprocess.run(command, capture_output=True, cwd=ROOT, check=False)
        elapsed, after = time.perf_counter() - started, os.times()
        cpu = after.children_user + after.children_system - children.children_user - children.children_system
        assert done.returncode == 0, done.stderr.decode()
        rate = args.records / elapsed
        print(
            f"{'CLI, --baseline --json':28} {elapsed:6.2f} s  {rate:9,.0f} records/s  (CPU {cpu:.2f} s, with start-up)"
        )


if __name__ == "__main__":
    main()
