"""The load tests still run: each script's ``--quick`` mode, in a subprocess, writing to a temporary directory.

The figures of a quick run mean nothing (a few dozen requests); only the exit status and the shape of the
result file are checked, so the scripts do not rot while the gateway changes under them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

SUMMARY_KEYS = {"requests", "errors", "p50_ms", "p99_ms", "mean_ms", "req_per_s"}
RATIO_KEYS = {"p50_ms", "p99_ms", "mean_ms", "req_per_s"}


def run_quick(script: str, out: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / script), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{script} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "verdict:" in result.stdout
    data: dict[str, Any] = json.loads((out / script.replace(".py", ".json")).read_text(encoding="utf-8"))
    assert data["quick"] is True
    return data


@pytest.mark.slow
def test_balance_quick(tmp_path: Path) -> None:
    data = run_quick("balance.py", tmp_path)
    scenarios = data["scenarios"]
    assert set(scenarios) == {"uneven", "uneven+external", "even"}
    for scenario in scenarios.values():
        assert SUMMARY_KEYS | {"share_to_a"} <= set(scenario["scrape_load_false"])
        assert SUMMARY_KEYS | {"share_to_a"} <= set(scenario["scrape_load_true"])
        assert RATIO_KEYS <= set(scenario["ratio_true_over_false"])
        assert scenario["scrape_load_false"]["errors"] == 0
        assert scenario["scrape_load_true"]["errors"] == 0
    assert isinstance(data["verdict"], str)


@pytest.mark.slow
def test_mirror_overhead_quick(tmp_path: Path) -> None:
    data = run_quick("mirror_overhead.py", tmp_path)
    for key in ("no_mirror", "mirror"):
        summary = data[key]
        assert SUMMARY_KEYS | {"overhead_p50_ms", "overhead_p99_ms"} <= set(summary)
        assert summary["errors"] == 0
    assert RATIO_KEYS <= set(data["ratio_mirror_over_no_mirror"])
    assert RATIO_KEYS <= set(data["ratio_aa_plain_over_plain"])
    shadows = data["shadow_outcomes"]
    assert shadows.get("ok", 0) > 0, shadows
    assert isinstance(data["verdict"], str)


def test_replay_bench_small(tmp_path: Path) -> None:
    """The replay benchmark on 2,000 records: it runs, and the replay reproduces every synthetic outcome."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "replay_bench.py"), "--records", "2000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    baseline = next(line for line in result.stdout.splitlines() if line.startswith("in-process, --baseline"))
    matched, checked = baseline.rsplit("reproduced ", 1)[1].split("/")
    assert int(checked) > 0 and matched == checked, baseline


@pytest.mark.slow
def test_semantic_overhead_quick(tmp_path: Path) -> None:
    data = run_quick("semantic_overhead.py", tmp_path)
    for scenario in data["scenarios"].values():
        assert {"plain", "semantic-cold", "semantic-warm", "semantic-skipped"} <= set(scenario["variants"])
        calls = scenario["embedding_calls"]
        assert calls["semantic-cold"] > 0 and calls["semantic-warm"] == 0 and calls["semantic-skipped"] == 0, calls
    assert "semantic-cold p50" in data["verdict"]
