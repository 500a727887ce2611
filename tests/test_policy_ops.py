"""Policy operations: hot reload under load, rejected edits, SIGHUP, admin API, explain, JSON Schema."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from tests.harness import Stack, free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "ops-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
POLICY = """
version: 1
revision: ${revision}
public_models: [assistant]
models:
  merged-v1: {kind: merged, sources: [source-a], backends: ["${merged}"]}
  source-a:  {kind: source, backends: ["${src}"]}
cohorts:
  - {name: billing, match: {content: "(?i)refund"}}
  - {name: general, default: true}
routes:
  billing: {target: ${billing_target}}
  general: {target: source-a}
evals:
  gates: [{models: [merged-v1], cohorts: [general, billing], evaluators: [json_valid], max_fail_rate: 0.5}]
"""
SIMS = {"merged": ["merged-v1"], "src": ["source-a"]}


def policy_text(stack: Stack, revision: str, target: str) -> str:
    text = POLICY.replace("${revision}", revision).replace("${billing_target}", target)
    return text.replace("${merged}", stack.sim_url("merged")).replace("${src}", stack.sim_url("src"))


def write_atomically(path: Path, text: str) -> None:
    """How editors and config tools save: write a temporary file, then rename it over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def stack() -> Iterator[Stack]:
    os.environ["GATEWAY_ADMIN_TOKEN"] = TOKEN
    try:
        template = POLICY.replace("${revision}", "r1").replace("${billing_target}", "merged-v1")
        with Stack(template, SIMS) as stack:
            yield stack
    finally:
        del os.environ["GATEWAY_ADMIN_TOKEN"]


def ask(client: httpx.Client, stack: Stack, text: str = "a refund") -> httpx.Response:
    body = {"model": "assistant", "messages": [{"role": "user", "content": text}], "max_tokens": 3}
    return client.post(f"{stack.url}/v1/chat/completions", json=body)


def test_edit_under_load_switches_routing_within_a_second_without_failures(stack: Stack) -> None:
    async def load(stop: asyncio.Event, results: list[tuple[float, int, str]]) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            body = {"model": "assistant", "messages": [{"role": "user", "content": "refund"}], "max_tokens": 3}

            async def worker() -> None:
                while not stop.is_set():
                    response = await client.post(f"{stack.url}/v1/chat/completions", json=body)
                    results.append(
                        (time.monotonic(), response.status_code, response.headers.get("x-gateway-model", ""))
                    )

            await asyncio.gather(*(worker() for _ in range(8)))

    async def scenario() -> tuple[float, list[tuple[float, int, str]]]:
        stop = asyncio.Event()
        results: list[tuple[float, int, str]] = []
        task = asyncio.create_task(load(stop, results))
        await asyncio.sleep(0.5)
        edited_at = time.monotonic()
        write_atomically(stack.policy_path, policy_text(stack, "r2", "source-a"))
        await asyncio.sleep(1.5)
        stop.set()
        await task
        return edited_at, results

    edited_at, results = asyncio.run(scenario())
    assert len(results) > 100
    assert {status for _, status, _ in results} == {200}
    after = [model for at, _, model in results if at > edited_at + 1.0]
    assert after and set(after) == {"source-a"}
    before = [model for at, _, model in results if at < edited_at]
    assert set(before) == {"merged-v1"}
    state = httpx.get(f"{stack.url}/admin/policy", headers=AUTH).json()
    assert state["revision"] == "r2" and state["last_reload"]["outcome"] == "loaded"
    assert state["last_reload"]["trigger"] == "file"


def test_invalid_edit_is_rejected_and_traffic_stays_on_the_old_policy(stack: Stack) -> None:
    old_version = httpx.get(f"{stack.url}/readyz").json()["policy_version"]
    broken = policy_text(stack, "r3", "merged-v2")
    write_atomically(stack.policy_path, broken)
    assert stack.wait_for(
        lambda: (
            (httpx.get(f"{stack.url}/admin/policy", headers=AUTH).json()["last_reload"] or {}).get("outcome")
            == "rejected"
        )
    )
    state = httpx.get(f"{stack.url}/admin/policy", headers=AUTH).json()
    assert state["version"] == old_version
    error = state["last_reload"]["errors"][0]
    assert error.startswith(f"{stack.policy_path}:12:21: routes.billing.target: unknown model 'merged-v2'")
    with httpx.Client() as client:
        response = ask(client, stack)
    assert response.status_code == 200 and response.headers["x-gateway-model"] == "merged-v1"
    assert response.headers["x-gateway-policy-version"] == old_version
    metrics = httpx.get(f"{stack.url}/metrics").text
    assert 'llm_gateway_policy_reloads_total{outcome="rejected"} 1.0' in metrics
    assert f'llm_gateway_policy_info{{version="{old_version}"}} 1.0' in metrics
    manual = httpx.post(f"{stack.url}/admin/policy/reload", headers=AUTH)
    assert manual.status_code == 422
    assert "unknown model 'merged-v2'" in manual.json()["error"]["message"]


def test_admin_reload_keeps_gate_and_backend_state(stack: Stack) -> None:
    assert httpx.post(f"{stack.url}/admin/gates/merged-v1/billing", json={"action": "trip"}, headers=AUTH).is_success
    assert stack.gateway is not None
    backend_before = stack.gateway.registry.pools["merged-v1"].backends[0]
    (stack.policy_path).write_text(policy_text(stack, "r4", "merged-v1"))
    response = httpx.post(f"{stack.url}/admin/policy/reload", headers=AUTH)
    assert response.status_code == 200 and response.json()["outcome"] in ("loaded", "unchanged")
    assert stack.gateway.registry.pools["merged-v1"].backends[0] is backend_before
    with httpx.Client() as client:
        assert ask(client, stack).headers["x-gateway-fallback"] == "eval:merged-v1"  # the gate survived
    again = httpx.post(f"{stack.url}/admin/policy/reload", headers=AUTH)
    assert again.json()["outcome"] == "unchanged"


def test_live_explain_shows_gate_and_breaker_state(stack: Stack) -> None:
    body = {"model": "assistant", "messages": [{"role": "user", "content": "refund please"}]}
    before = httpx.post(f"{stack.url}/admin/explain", json=body, headers=AUTH).json()
    assert before["cohort"] == "billing" and before["rule"] == "cohorts[0] billing: content"
    assert before["attempts"] == [{"model": "merged-v1", "why": "route target"}]
    assert before["backends"][0]["breaker"]["state"] == "closed"
    httpx.post(f"{stack.url}/admin/gates/merged-v1/billing", json={"action": "trip"}, headers=AUTH)
    after = httpx.post(f"{stack.url}/admin/explain", json=body, headers=AUTH).json()
    assert after["attempts"] == []
    assert after["skipped"] == [{"model": "merged-v1", "why": "eval"}]
    assert after["gates"][0]["tripped"] is True
    assert httpx.post(f"{stack.url}/admin/explain", json=body).status_code == 401


def test_admin_api_needs_the_token(stack: Stack) -> None:
    for method, path in [("GET", "/admin/state"), ("GET", "/admin/policy"), ("POST", "/admin/policy/reload")]:
        assert httpx.request(method, stack.url + path).status_code == 401
        wrong = httpx.request(method, stack.url + path, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    del os.environ["GATEWAY_ADMIN_TOKEN"]
    try:
        off = httpx.get(f"{stack.url}/admin/state", headers=AUTH)
        assert off.status_code == 404 and "disabled" in off.json()["error"]["message"]
    finally:
        os.environ["GATEWAY_ADMIN_TOKEN"] = TOKEN


def test_configmap_symlink_swap_reloads(tmp_path: Path) -> None:
    """Kubernetes mounts policy.yaml -> ..data/policy.yaml and swaps the ..data symlink on update."""
    os.environ["GATEWAY_ADMIN_TOKEN"] = TOKEN
    try:
        with Stack(POLICY.replace("${revision}", "r1").replace("${billing_target}", "merged-v1"), SIMS) as stack:
            mount = tmp_path / "mount"
            mount.mkdir()
            for version, target in (("v1", "merged-v1"), ("v2", "source-a")):
                (mount / f"..{version}").mkdir()
                (mount / f"..{version}" / "policy.yaml").write_text(policy_text(stack, version, target))
            (mount / "..data").symlink_to("..v1")
            (mount / "policy.yaml").symlink_to("..data/policy.yaml")
            assert stack.gateway is not None
            reloader = stack.gateway.reloader

            async def watch_the_mount() -> None:
                await reloader.stop()
                reloader.path = mount / "policy.yaml"
                await reloader.reload("admin")
                reloader.start(watch=True)

            stack.call(watch_the_mount())
            time.sleep(0.3)
            (mount / "..data_tmp").symlink_to("..v2")
            os.replace(mount / "..data_tmp", mount / "..data")
            assert stack.wait_for(
                lambda: httpx.get(f"{stack.url}/admin/policy", headers=AUTH).json()["revision"] == "v2", timeout=5
            )
    finally:
        del os.environ["GATEWAY_ADMIN_TOKEN"]


def test_sighup_reloads_and_admin_port_separates_admin(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    local = (ROOT / "routing_policies" / "local.yaml").read_text()
    policy.write_text(local)
    port, admin_port = free_port(), free_port()
    env = {**os.environ, "GATEWAY_ADMIN_TOKEN": TOKEN}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--policy",
            str(policy),
            "--port",
            str(port),
            "--admin-port",
            str(admin_port),
            "--no-watch",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
        wait_ready(url)
        assert httpx.get(f"{url}/admin/state", headers=AUTH).status_code == 404
        assert httpx.get(f"{admin}/admin/state", headers=AUTH).status_code == 200
        first = httpx.get(f"{url}/readyz").json()["policy_version"]
        # The new policy also gives an embedded simulator a second model name, which it must serve after the reload.
        extra = '  merged-v2: {kind: merged, sources: [billing-specialist], backends: ["sim://merged-a"]}\n'
        reloaded = local.replace("revision: local-default", "revision: after-sighup")
        policy.write_text(reloaded.replace("  merged-v1:\n", extra + "  merged-v1:\n"))
        time.sleep(0.3)
        assert httpx.get(f"{url}/readyz").json()["policy_version"] == first  # --no-watch: no reload by itself
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and httpx.get(f"{url}/readyz").json()["policy_version"] == first:
            time.sleep(0.05)
        assert httpx.get(f"{url}/readyz").json()["policy_version"].startswith("after-sighup/")
        assert httpx.get(f"{admin}/admin/policy", headers=AUTH).json()["last_reload"]["trigger"] == "sighup"
        chat = {"model": "merged-v2", "messages": [{"role": "user", "content": "hello"}]}
        answer = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-gateway-model"] == "merged-v2" and answer.json()["model"] == "merged-v2"
    finally:
        process.terminate()
        assert process.wait(10) is not None


def test_committed_json_schema_is_current_and_validates_policies() -> None:
    from gateway.policy.jsonschema import policy_json_schema

    committed = json.loads((ROOT / "routing_policies" / "policy.schema.json").read_text())
    assert committed == policy_json_schema(), "regenerate: llm-gateway schema > routing_policies/policy.schema.json"
    validator = jsonschema.Draft202012Validator(committed)
    files = sorted((ROOT / "routing_policies").glob("*.yaml"))
    assert len(files) >= 8
    for path in files:
        assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == [], path
    broken: dict[str, Any] = yaml.safe_load((ROOT / "routing_policies" / "local.yaml").read_text())
    broken["routes"]["out_of_domain"]["fallbak"] = ["base"]
    assert any("fallbak" in e.message for e in validator.iter_errors(broken))
    broken = yaml.safe_load((ROOT / "routing_policies" / "local.yaml").read_text())
    broken["routes"]["tool_required"]["split"]["merged-v1"] = -1
    assert list(validator.iter_errors(broken))
    printed = subprocess.run(
        [sys.executable, "-m", "gateway", "schema"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert json.loads(printed.stdout) == committed
