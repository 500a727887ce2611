"""The overhead benchmark still runs: ``loadtests/overhead.py --quick --before HEAD`` in a subprocess, writing to a
temporary directory. Quick mode measures the direct path and the gateway only (no peers), here with the gateway of
the last commit next to it (``gateway-before``, run from an extracted tree), against the simulator, for a few
seconds: its figures mean nothing, only the exit status and the shape of the results are checked, so the
benchmark does not rot while the gateway changes under it (``make bench`` is the real run; it is too noisy for
``make test``).

The benchmark drives its load with ``wrk`` (Debian package; ``make bench-tools``): without it this test skips
locally and fails in CI (``CI`` set), where ``make test`` installs it first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUMMARY_KEYS = {"requests", "req_per_s", "p50_ms", "p99_ms", "errors", "cpu_ms_per_request", "peak_rss_mb"}
QUICK_SCENARIOS = {"fast-c16", "slow-c16", "stream-c16"}


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        message = "wrk is not installed (apt-get install wrk, or make bench-tools)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI is set, so this test does not skip")
        pytest.skip(message)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    require_wrk()
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "overhead.py"), "--quick", "--before", "HEAD", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"overhead.py exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return json.loads((out / "overhead.json").read_text(encoding="utf-8")), done.stdout, out


@pytest.mark.slow
def test_quick_run_measures_direct_and_gateway(quick_run: tuple[dict[str, Any], str, Path]) -> None:
    data, stdout, out = quick_run
    assert data["quick"] is True
    assert data["upstream"]["kind"] == "sim"
    assert set(data["results"]) == QUICK_SCENARIOS
    for key in QUICK_SCENARIOS:
        paths = data["results"][key]["paths"]
        assert set(paths) == {"direct", "gateway", "gateway-before"}
        for summary in paths.values():
            assert SUMMARY_KEYS <= set(summary)
            assert summary["requests"] > 0
            assert summary["errors"] == 0, summary["error_kinds"]
        for gateway in ("gateway", "gateway-before"):
            assert {"added_p50_ms", "added_p99_ms"} <= set(paths[gateway])
            assert paths[gateway]["cpu_ms_per_request"] > 0
    stream = data["results"]["stream-c16"]["paths"]["gateway"]
    assert {"total_p50_ms", "spread_p50_ms", "reads_p50"} <= set(stream)
    assert (out / "overhead.png").stat().st_size > 0
    assert "targets, gateway:" in stdout
    assert "targets, gateway-before:" in stdout


@pytest.mark.slow
def test_quick_run_measures_the_gateway_of_a_git_ref(quick_run: tuple[dict[str, Any], str, Path]) -> None:
    data, _, _ = quick_run
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert data["gateways"]["gateway-before"] == f"HEAD ({head})"
    assert data["gateways"]["gateway"].startswith("this checkout")
    assert len(data["targets_before"]) == len(data["targets"])
    stream = data["results"]["stream-c16"]["paths"]["gateway-before"]
    assert stream["spread_p50_ms"] > 0


@pytest.mark.slow
def test_quick_run_skips_peers_and_reports_every_target(quick_run: tuple[dict[str, Any], str, Path]) -> None:
    data, _, _ = quick_run
    assert {name: peer["status"] for name, peer in data["peers"].items()} == {
        "nginx": "skipped",
        "litellm": "skipped",
        "vllm-router": "skipped",
        "aiohttp-pass": "skipped",
    }
    assert data["ratios"] == data["ratios_before"] == {}
    targets = data["targets"]
    assert len(targets) == 11
    for target in targets:
        assert set(target) == {"target", "value", "op", "limit", "met", "noisy"}
        assert target["met"] in (True, False, None)
    scale = data["scale"]
    for path in ("direct", "gateway"):
        assert scale[path]["completed"] == scale["streams"] > 0
        assert scale[path]["errors"] == 0
    assert scale["gateway"]["rss_peak_mb"] > 0
