"""The backend's own key (``api_key: env:VAR``) on every upstream request: primary attempts, mirror copies, probes.

The keyed backend is a :class:`FakeUpstream` that answers 401 to anything but ``Authorization: Bearer <its key>``
and records every request's headers, so the assertions read what actually arrived. A probe copy that lacks the key
gets 401, its answer is never evaluated, and the tripped eval gate it should clear stays tripped forever.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.fakeupstream import FakeUpstream, Script
from tests.harness import Stack

BACKEND_KEY = "backend-secret-7f3a"
CLIENT_KEY = "client-secret-c41d"
ADMIN_TOKEN = "backend-key-admin"
KEYED = Script(require_key=f"Bearer {BACKEND_KEY}")

POLICY = """
version: 1
public_models: [assistant]
models:
  keyed: {kind: base, backends: ["${keyed}"], api_key: env:GW_TEST_BACKEND_KEY}
  plain: {kind: base, backends: ["${plain}"]}
cohorts:
  - {name: direct, match: {header: {x-case: direct}}}
  - {name: mirrored, match: {header: {x-case: mirrored}}}
  - {name: gated, match: {header: {x-case: gated}}}
  - {name: other, default: true}
routes:
  direct:   {target: keyed}
  mirrored: {target: plain, mirror: {to: [keyed], sample: 1.0}}
  gated:    {target: keyed, fallback: [plain]}
  other:    {target: plain}
keys:
  tester: {key: env:GW_TEST_CLIENT_KEY}
evals:
  window: {size: 20, min_samples: 5}
  gates:
    - {models: [keyed], cohorts: [gated], evaluators: [json_valid], max_fail_rate: 0.2, probe_sample: 1.0}
health: {interval_s: 3600}
"""


@dataclass
class Deployment:
    stack: Stack
    keyed: FakeUpstream
    plain: FakeUpstream

    def reset(self) -> None:
        self.keyed.reset(KEYED)
        self.plain.reset()

    def admin_state(self) -> dict[str, Any]:
        auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        state: dict[str, Any] = httpx.get(f"{self.stack.url}/admin/state", headers=auth, timeout=5).json()
        return state

    def gate_tripped(self) -> bool:
        gates = self.admin_state()["evals"]["gates"]
        return bool(next(g for g in gates if g["model"] == "keyed" and g["cohort"] == "gated")["tripped"])


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GW_TEST_BACKEND_KEY", BACKEND_KEY)
        patch.setenv("GW_TEST_CLIENT_KEY", CLIENT_KEY)
        patch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
        with FakeUpstream(KEYED) as keyed, FakeUpstream() as plain:
            policy = string.Template(POLICY).substitute(keyed=keyed.url, plain=plain.url)
            with Stack(policy, sims={}) as stack:
                yield Deployment(stack, keyed, plain)


@pytest.fixture
def gw(deployment: Deployment) -> Deployment:
    deployment.reset()
    return deployment


def chat(gw: Deployment, case: str, **body: Any) -> httpx.Response:
    payload = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **body}
    headers = {"x-case": case, "authorization": f"Bearer {CLIENT_KEY}"}
    response = httpx.post(f"{gw.stack.url}/v1/chat/completions", json=payload, headers=headers, timeout=20)
    assert response.status_code == 200, response.text
    return response


def assert_keyed_copy(gw: Deployment, headers: dict[str, str]) -> None:
    assert headers.get("authorization") == f"Bearer {BACKEND_KEY}", headers
    assert headers.get("x-gateway-shadow") == "1", headers


def test_primary_attempts_carry_the_backend_key(gw: Deployment) -> None:
    response = chat(gw, "direct")
    assert response.headers["x-gateway-model"] == "keyed"
    (seen,) = gw.keyed.posts()
    assert seen.headers["authorization"] == f"Bearer {BACKEND_KEY}"
    assert "x-gateway-shadow" not in seen.headers


def test_mirror_copies_carry_the_backend_key(gw: Deployment) -> None:
    response = chat(gw, "mirrored")
    assert response.headers["x-gateway-model"] == "plain"
    assert gw.stack.wait_for(lambda: len(gw.keyed.posts()) == 1)
    assert_keyed_copy(gw, gw.keyed.posts()[0].headers)
    assert gw.stack.wait_for(lambda: gw.admin_state()["mirror"]["requests"].get("keyed/mirrored", {}).get("ok") == 1)
    assert gw.admin_state()["mirror"]["requests"]["keyed/mirrored"] == {"ok": 1}  # the copy was accepted, not 401


def test_probe_copies_carry_the_backend_key_so_a_tripped_gate_can_reset(gw: Deployment) -> None:
    structured = {"response_format": {"type": "json_object"}}
    gw.keyed.script = Script(require_key=f"Bearer {BACKEND_KEY}", content="this is not JSON")
    for _ in range(5):
        assert chat(gw, "gated", **structured).headers["x-gateway-model"] == "keyed"
    assert gw.stack.wait_for(gw.gate_tripped), gw.admin_state()["evals"]["gates"]
    gw.keyed.script = KEYED  # healed: valid JSON again
    primaries = len(gw.keyed.posts())
    sent = 0
    while gw.gate_tripped() and sent < 30:
        rerouted = chat(gw, "gated", **structured)
        assert rerouted.headers["x-gateway-model"] == "plain"
        assert rerouted.headers["x-gateway-fallback"] == "eval:keyed"
        sent += 1
    assert gw.stack.wait_for(lambda: not gw.gate_tripped()), gw.admin_state()["evals"]["gates"]
    probes = gw.keyed.posts()[primaries:]
    assert probes, "no probe copy reached the tripped model"
    for probe in probes:
        assert_keyed_copy(gw, probe.headers)
    assert chat(gw, "gated", **structured).headers["x-gateway-model"] == "keyed"


def test_the_clients_own_key_never_reaches_a_backend(gw: Deployment) -> None:
    chat(gw, "direct")
    chat(gw, "mirrored")
    chat(gw, "other")
    assert gw.stack.wait_for(lambda: len(gw.keyed.posts()) == 2)
    seen = [*gw.keyed.seen, *gw.plain.seen]
    assert len(seen) == 4
    for request in seen:
        assert all(CLIENT_KEY not in value for value in request.headers.values()), request.headers
    assert all("authorization" not in request.headers for request in gw.plain.seen)
