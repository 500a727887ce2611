"""The overhead benchmark still runs: ``loadtests/overhead.py --quick --before HEAD --peers gateway-redis`` in a
subprocess, writing to a temporary directory. Quick mode measures the direct path and the gateway only (no peers
but those ``--peers`` names), here with the gateway of the last commit next to it (``gateway-before``, run from an
extracted tree) and the gateway with its fleet state in a Redis the run starts (``gateway-redis``), against the
simulator, for a few seconds: its figures mean nothing, only the exit status and the shape of the results are
checked, so the benchmark does not rot while the gateway changes under it (``make bench`` is the real run; it is
too noisy for ``make test``).

The benchmark drives its load with ``wrk``, and gateway-redis needs ``redis-server`` (Debian packages; ``make
bench-tools``): without them these tests skip locally and fail in CI (``CI`` set), where ``make test`` installs
them first.
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
REDIS = "gateway-redis"


def require(tool: str) -> None:
    if shutil.which(tool) is None:
        message = f"{tool} is not installed (apt-get install {tool}, or make bench-tools)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI is set, so this test does not skip")
        pytest.skip(message)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    require("wrk")
    out = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "--before", "HEAD", "--peers", "gateway-redis", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "overhead.py"), *argv],
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
        assert {"direct", "gateway", "gateway-before"} <= set(paths) <= {"direct", "gateway", "gateway-before", REDIS}
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
    assert {name: (peer["status"], peer.get("why")) for name, peer in data["peers"].items() if name != REDIS} == {
        "nginx": ("skipped", "not in --peers"),
        "litellm": ("skipped", "not in --peers"),
        "vllm-router": ("skipped", "not in --peers"),
        "aiohttp-pass": ("skipped", "not in --peers"),
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


@pytest.mark.slow
def test_quick_run_measures_the_gateway_with_its_state_in_redis(quick_run: tuple[dict[str, Any], str, Path]) -> None:
    data, stdout, _ = quick_run
    peer = data["peers"][REDIS]
    if shutil.which("redis-server") is None:
        assert peer == {
            "status": "skipped",
            "why": "redis-server is not installed (apt-get install redis-server; make bench-tools)",
        }
        assert "targets_redis" not in data
        require("redis-server")
    assert peer["status"] == "measured"
    assert peer["version"].startswith("redis-server ")
    assert data["gateways"][REDIS].startswith(data["gateways"]["gateway"] + ", --state redis://127.0.0.1:")
    assert data["gateways"][REDIS].endswith("/0?prefix=bench")
    for key in QUICK_SCENARIOS:
        summary = data["results"][key]["paths"][REDIS]
        assert summary["requests"] > 0
        assert summary["errors"] == 0, summary["error_kinds"]
        assert summary["cpu_ms_per_request"] > 0
    phases = data["state_store"]["phases"]
    assert set(phases) == {"fast", "slow", "stream"}
    for seen in phases.values():
        assert seen["backend_up"] == 1
        assert seen["failed_syncs"] == 0
        assert seen["redis_keys"] > 0  # what the gateway synced: windows, gates, answered requests, its heartbeat
    targets = {t["target"]: t for t in data["targets_redis"]}
    assert len(targets) == 3
    latency = targets["added p50 ms at 50 ms c16, gateway-redis - gateway"]
    paths = data["results"]["slow-c16"]["paths"]
    assert latency["value"] == round(paths[REDIS]["added_p50_ms"] - paths["gateway"]["added_p50_ms"], 3)
    assert (latency["op"], latency["limit"], latency["met"]) == ("<=", 0.1, latency["value"] <= 0.1)
    capacity = targets["capacity (req/s at once, c64) x gateway's"]
    assert (capacity["value"], capacity["met"]) == (None, None)  # no c64 block in --quick
    synced = targets["failed syncs with Redis, gateway-redis"]
    assert (synced["value"], synced["met"]) == (0, True)
    assert "vs gateway (memory://), same run:" in stdout
