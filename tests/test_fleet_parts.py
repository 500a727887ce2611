"""Fleet state's parts: the ``--state`` URL, the fleet rate limiter's shares, leases and documents in a real Redis,
an unreachable Redis at start, and ``memory://`` as the default."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.evals.feedback import FeedbackAlreadyRecorded, UnknownRequest
from gateway.fleet import FleetState, StateUrl, StateUrlError, open_state
from gateway.fleet.limits import FleetRateLimiter
from gateway.fleet.redis_state import RedisFleetState
from gateway.policy import load_policy
from gateway.policy.schema import RateLimitSpec
from gateway.ratelimit import RateLimited
from gateway.runtime import Gateway
from tests.fleetkit import TOKEN, Fleet, Process, RedisServer, wait_until
from tests.harness import Stack, free_port, wait_ready
from tests.policies import ONE_MODEL_POLICY


def test_state_urls_parse_and_never_show_the_password() -> None:
    assert StateUrl.parse("memory://").backend == "memory"
    url = StateUrl.parse("redis://:s3cret@cache.internal:6380/2?prefix=team-a&sync_s=0.25&ssl_ca_certs=/ca.pem")
    assert (url.backend, url.prefix, url.sync_s, url.timeout_s) == ("redis", "team-a", 0.25, 1.0)
    assert url.redis_url == "redis://:s3cret@cache.internal:6380/2?ssl_ca_certs=%2Fca.pem"
    assert "s3cret" not in url.shown and "cache.internal:6380" in url.shown
    assert StateUrl.parse("rediss://cache:6379/0").redis_url.startswith("rediss://")
    for bad, says in [
        ("postgres://:pw@db/0", "must be memory:// or redis://"),
        ("redis://:pw@/0", "names no Redis host"),
        ("redis://h:6379/0?prefix=a b", "prefix"),
        ("redis://h:6379/0?sync_s=0", "sync_s"),
        ("redis://h:6379/0?timeout_s=x", "timeout_s"),
    ]:
        with pytest.raises(StateUrlError, match=says) as error:
            StateUrl.parse(bad)
        assert "pw" not in str(error.value)


def test_an_instance_admits_what_it_holds_and_reports_its_holding_at_each_sync() -> None:
    now = [100.0]
    limiter = FleetRateLimiter(lambda: now[0])
    spec = RateLimitSpec(requests_per_min=60)
    assert limiter.prepare([("app", spec)]) == [("app", "requests", 60, 60.0)]  # never synced: alone, whole limit
    limiter.settle({("app", "requests"): (-40.0, 3)})  # three live instances: 20 each, 40 given back
    for _ in range(20):
        limiter.admit("app", spec)
    with pytest.raises(RateLimited) as refused:
        limiter.admit("app", spec)
    assert 2.9 < refused.value.retry_after_s < 3.1  # a third of the refill comes to this instance
    now[0] += 30  # online, nothing comes back without a sync: the fleet's level refills in Redis instead
    with pytest.raises(RateLimited):
        limiter.admit("app", spec)
    assert limiter.prepare([("app", spec)]) == [("app", "requests", 60, 0.0)]
    limiter.settle({("app", "requests"): (1.5, 3)})
    limiter.admit("app", spec)
    with pytest.raises(RateLimited):
        limiter.admit("app", spec)


def test_without_redis_an_instance_refills_its_own_part_and_tokens_go_into_debt() -> None:
    now = [0.0]
    limiter = FleetRateLimiter(lambda: now[0])
    spec = RateLimitSpec(tokens_per_min=600)
    limiter.prepare([("app", spec)])
    limiter.settle({("app", "tokens"): (-300.0, 2)})  # holds 300 of 600, two instances
    limiter.admit("app", spec)
    limiter.charge_tokens("app", spec, 400)  # one large answer: 100 in debt
    limiter.offline()
    with pytest.raises(RateLimited) as refused:
        limiter.admit("app", spec)
    assert 19 < refused.value.retry_after_s < 21  # 100 tokens at 5 a second (600 a minute over 2 instances)
    now[0] += 30
    limiter.admit("app", spec)  # 50 now
    now[0] += 600  # ten minutes without Redis: never beyond this instance's part
    assert limiter.prepare([("app", spec)]) == [("app", "tokens", 600, 300.0)]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(ONE_MODEL_POLICY.replace("${sim}", "sim://one"), encoding="utf-8")
    return path


async def test_one_instance_holds_a_lease_and_documents_reach_every_instance(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    policy = load_policy(policy_file(tmp_path))
    url = StateUrl.parse(redis_server.url + "?prefix=parts&sync_s=0.1")
    first = Gateway(policy, state=RedisFleetState(url, "first"), run_health_checks=False, watch_policy=False)
    second = Gateway(policy, state=RedisFleetState(url, "second"), run_health_checks=False, watch_policy=False)
    await first.start()
    await second.start()
    try:
        assert await first.fleet.hold_lease("rollouts", 1.0)
        assert not await second.fleet.hold_lease("rollouts", 1.0)
        assert await first.fleet.hold_lease("rollouts", 0.3)  # renewed by its holder
        await asyncio.sleep(0.5)
        assert await second.fleet.hold_lease("rollouts", 1.0)  # the holder stopped renewing: taken over
        assert await first.fleet.put_document("rollout:chat", {"step": 2}) == {"step": 2, "version": 1}
        stale = await second.fleet.put_document("rollout:chat", {"step": 0}, expected=0)
        assert stale == {"step": 2, "version": 1}  # written since version 0: the stored one wins
        assert await second.fleet.put_document("rollout:chat", {"step": 3}, expected=1) == {"step": 3, "version": 2}
        await first.fleet.flush()
        assert first.fleet.document("rollout:chat") == {"step": 3, "version": 2}
        assert first.fleet.documents("rollout:") == {"rollout:chat": {"step": 3, "version": 2}}
        fleet = second.state()["fleet"]
        assert isinstance(fleet, dict)
        assert fleet["backend"] == "redis" and fleet["connected"] is True and fleet["instance"] == "second"
        assert {i["id"] for i in fleet["instances"]} == {"first", "second"}
        assert all(i["policy_version"] == policy.version for i in fleet["instances"])
    finally:
        await first.close()
        await second.close()


def test_an_unreachable_redis_at_start_serves_on_local_state_and_says_so_once(tmp_path: Path) -> None:
    path = policy_file(tmp_path)
    port = free_port()
    dead = f"redis://127.0.0.1:{free_port()}/0?sync_s=0.1"
    env = {"GATEWAY_ADMIN_TOKEN": TOKEN}
    process = Process(["serve", "--policy", str(path), "--port", str(port), "--state", dead], tmp_path / "log", env)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        wait_ready(url)
        assert time.monotonic() - started < 10
        body = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        for _ in range(5):
            assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=5).status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
        assert "llm_gateway_state_backend_up 0.0" in metrics
        assert wait_until(lambda: 'llm_gateway_state_errors_total{op="sync"}' in httpx.get(f"{url}/metrics").text, 5)
        time.sleep(1)  # some ten failed syncs
        fleet = httpx.get(f"{url}/admin/state", headers={"authorization": f"Bearer {TOKEN}"}).json()["fleet"]
        assert fleet["backend"] == "redis" and fleet["connected"] is False
    finally:
        process.stop()
    assert process.output().count(" unreachable (") == 1, process.output()


def test_serve_refuses_a_state_url_it_cannot_use_in_one_line(tmp_path: Path) -> None:
    path = policy_file(tmp_path)
    process = Process(
        ["serve", "--policy", str(path), "--port", str(free_port()), "--state", "etcd://x"], tmp_path / "o"
    )
    assert process.process.wait(30) == 1
    process.stop()
    output = process.output()
    assert "--state must be memory:// or redis://" in output and "Traceback" not in output


def test_memory_is_the_default_and_reports_this_instance_alone() -> None:
    assert type(open_state("memory://")) is FleetState
    os.environ["GATEWAY_ADMIN_TOKEN"] = TOKEN
    try:
        with Stack(ONE_MODEL_POLICY, {"sim": ["tiny"]}) as stack:
            state = httpx.get(f"{stack.url}/admin/state", headers={"authorization": f"Bearer {TOKEN}"}).json()
            assert stack.gateway is not None
            metrics = httpx.get(f"{stack.url}/metrics").text
    finally:
        del os.environ["GATEWAY_ADMIN_TOKEN"]
    fleet = state["fleet"]
    assert fleet["backend"] == "memory" and fleet["connected"] is True
    assert [i["id"] for i in fleet["instances"]] == [fleet["instance"]]
    assert "llm_gateway_state_backend_up 1.0" in metrics


async def test_feedback_records_are_claimed_once_fleet_wide_and_expire_with_their_ttl(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(ONE_MODEL_POLICY.replace("${sim}", "sim://one") + "evals: {feedback_ttl_s: 1}\n", encoding="utf-8")
    policy = load_policy(path)
    url = StateUrl.parse(redis_server.url + "?prefix=feedback&sync_s=5")
    first = Gateway(policy, state=RedisFleetState(url, "first"), run_health_checks=False, watch_policy=False)
    second = Gateway(policy, state=RedisFleetState(url, "second"), run_health_checks=False, watch_policy=False)
    await first.start()
    await second.start()
    try:
        first.recorder.feedback.remember("r-1", "tiny", "chat", "app")
        first.recorder.feedback.remember("r-2", "tiny", "chat", "app")
        with pytest.raises(UnknownRequest):
            await second.fleet.claim_feedback("r-1", "app")  # not synced yet (the loop syncs every 5 s here)
        assert await first.fleet.flush()
        with pytest.raises(UnknownRequest):
            await second.fleet.claim_feedback("r-1", "other-key")  # another key's request stays invisible
        answered = await second.fleet.claim_feedback("r-1", "app")
        assert (answered.model, answered.cohort) == ("tiny", "chat")
        with pytest.raises(FeedbackAlreadyRecorded):
            await first.fleet.claim_feedback("r-1", "app")  # scored through the other instance
        await asyncio.sleep(1.2)
        with pytest.raises(UnknownRequest):
            await second.fleet.claim_feedback("r-2", "app")  # older than feedback_ttl_s
    finally:
        await first.close()
        await second.close()


RESPONSES_POLICY = """
version: 1
public_models: [assistant]
models:
  tiny: {kind: source, backends: ["${sim}", "${sim2}"]}
cohorts:
  - {name: chat, default: true}
routes:
  chat: {target: tiny}
"""


def test_a_response_continued_through_another_instance_goes_to_the_replica_that_holds_it(
    redis_server: RedisServer,
) -> None:
    with Fleet(RESPONSES_POLICY, ["tiny"], redis_server.url + "?prefix=responses", instances=2) as fleet:
        ids = []
        for n in range(6):
            first = httpx.post(f"{fleet.urls[0]}/v1/responses", json={"model": "assistant", "input": f"hi {n}"})
            assert first.status_code == 200, first.text
            ids.append(first.json()["id"])
        time.sleep(1.5)  # instance 1 learns of them at instance 0's next sync (every 0.5 s)
        for response_id in ids:
            for _ in range(3):  # routed at random between the two replicas, one would miss half the time
                body = {"model": "assistant", "input": "and then?", "previous_response_id": response_id}
                continued = httpx.post(f"{fleet.urls[1]}/v1/responses", json=body)
                assert continued.status_code == 200, continued.text
                assert continued.json()["previous_response_id"] == response_id
