"""A real Prometheus scrapes a real gateway: the exposition parses and the counts add up.

The gateway runs the embedded default policy (simulated backends) on a loopback port; Prometheus (the Debian
package's binary, ``make prometheus-tools``) scrapes it every second. Skips without ``prometheus`` locally, fails
without it in CI.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import harness

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = 25
BODY = {"model": "support-assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def require_tool(name: str) -> str:
    return harness.require_tool(name, "run `make prometheus-tools` (Debian package prometheus)")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def wait_until_ready(client: httpx.Client, url: str, process: subprocess.Popen[bytes], log: Path) -> httpx.Response:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        try:
            response = client.get(url)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after 30 s:\n{log.read_text()[-3000:]}")


def query(client: httpx.Client, base: str, promql: str) -> list[dict[str, Any]]:
    response = client.get(f"{base}/api/v1/query", params={"query": promql})
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(result: list[dict[str, Any]]) -> float | None:
    """The value of a one-series instant vector, None while it is empty."""
    return float(result[0]["value"][1]) if result else None


@pytest.mark.slow
def test_prometheus_scrapes_the_gateway(tmp_path: Path) -> None:
    prometheus_bin = require_tool("prometheus")
    gateway_port, prometheus_port = harness.free_port(), harness.free_port()
    gateway_log, prometheus_log = tmp_path / "gateway.log", tmp_path / "prometheus.log"
    config = tmp_path / "prometheus.yaml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: llm-gateway\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{gateway_port}']\n"
    )
    gateway_cmd = [sys.executable, "-m", "gateway", "serve", "--policy", "routing_policies/local.yaml"]
    gateway_cmd += ["--host", "127.0.0.1", "--port", str(gateway_port)]
    prometheus_cmd = [
        prometheus_bin,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ]
    processes: list[subprocess.Popen[bytes]] = []
    with gateway_log.open("wb") as gw_out, prometheus_log.open("wb") as prom_out, httpx.Client(timeout=10) as client:
        try:
            gateway = subprocess.Popen(gateway_cmd, cwd=ROOT, stdout=gw_out, stderr=subprocess.STDOUT)
            processes.append(gateway)
            gateway_url = f"http://127.0.0.1:{gateway_port}"
            ready = wait_until_ready(client, f"{gateway_url}/readyz", gateway, gateway_log)
            policy_version = ready.json()["policy_version"]

            statuses = [
                client.post(f"{gateway_url}/v1/chat/completions", json=BODY).status_code for _ in range(REQUESTS)
            ]
            assert statuses == [200] * REQUESTS

            prometheus = subprocess.Popen(prometheus_cmd, cwd=tmp_path, stdout=prom_out, stderr=subprocess.STDOUT)
            processes.append(prometheus)
            prometheus_url = f"http://127.0.0.1:{prometheus_port}"
            wait_until_ready(client, f"{prometheus_url}/-/ready", prometheus, prometheus_log)

            total: float | None = None
            deadline = time.monotonic() + 30
            while total != REQUESTS and time.monotonic() < deadline:
                time.sleep(0.25)
                total = scalar(query(client, prometheus_url, "sum(llm_gateway_requests_total)"))
            assert total == REQUESTS, (
                f"sum(llm_gateway_requests_total) = {total}:\n{prometheus_log.read_text()[-3000:]}"
            )

            info = query(client, prometheus_url, 'llm_gateway_policy_info{job="llm-gateway"}')
            assert [series["metric"]["version"] for series in info] == [policy_version]
        finally:
            for process in reversed(processes):
                stop(process)
