"""Per-replica connection limits, connection reuse and the backend's Retry-After, seen from the backend's side.

Each backend is a :class:`FakeUpstream` that records on which TCP connection every request arrived, so "one
connection", "never two at once" and "not tried again for two seconds" are read off the wire.
"""

from __future__ import annotations

import asyncio
import itertools
import string
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest

from tests.fakeupstream import FakeUpstream, Script
from tests.harness import Stack

POLICY = """
version: 1
public_models: [assistant]
models:
  slow:  {kind: base, backends: ["${slow}"], max_connections: 1}
  alone: {kind: base, backends: ["${alone}"], max_connections: 1}
  fast:  {kind: base, backends: ["${fast}"]}
  pair:  {kind: base, backends: ["${pair_a}", "${pair_b}"]}
  busy:  {kind: base, backends: ["${busy}"]}
cohorts:
  - {name: slow, match: {header: {x-case: slow}}}
  - {name: alone, match: {header: {x-case: alone}}}
  - {name: pair, match: {header: {x-case: pair}}}
  - {name: busy, match: {header: {x-case: busy}}}
  - {name: plain, default: true}
routes:
  slow:  {target: slow, fallback: [fast]}
  alone: {target: alone}
  pair:  {target: pair}
  busy:  {target: busy}
  plain: {target: fast}
health:
  interval_s: 3600
  breaker: {consecutive_failures: 1000, min_requests: 1000}
  timeouts: {pool_wait_s: ${pool_wait_s}, first_byte_s: 10, total_s: 20}
"""
BACKENDS = ("slow", "alone", "fast", "pair_a", "pair_b", "busy")
HOLD_S = 1.5
POOL_WAIT_S = 0.2
RETRY_AFTER_S = 2


@dataclass
class Deployment:
    stack: Stack
    fakes: dict[str, FakeUpstream]
    client: httpx.Client  # one client for the module: a new one per request costs ~50 ms of TLS setup

    def reset(self) -> None:
        for fake in self.fakes.values():
            fake.reset()


def deploy(fakes: dict[str, FakeUpstream], pool_wait_s: float) -> Stack:
    urls = {name: fake.url for name, fake in fakes.items()}
    return Stack(string.Template(POLICY).substitute(urls, pool_wait_s=pool_wait_s), sims={})


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    with ExitStack() as running:
        fakes = {name: running.enter_context(FakeUpstream()) for name in BACKENDS}
        stack = running.enter_context(deploy(fakes, POOL_WAIT_S))
        yield Deployment(stack, fakes, running.enter_context(httpx.Client(timeout=20)))


@pytest.fixture
def gw(deployment: Deployment) -> Deployment:
    deployment.reset()
    return deployment


BODY = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def chat(gw: Deployment, case: str, stream: bool = False) -> httpx.Response:
    body = {**BODY, "stream": stream}
    return gw.client.post(f"{gw.stack.url}/v1/chat/completions", json=body, headers={"x-case": case})


async def timed_pair(stack: Stack, case: str) -> list[tuple[float, httpx.Response]]:
    """Two concurrent requests, fastest answer first."""
    async with httpx.AsyncClient(timeout=20) as client:

        async def one() -> tuple[float, httpx.Response]:
            started = time.perf_counter()
            response = await client.post(f"{stack.url}/v1/chat/completions", json=BODY, headers={"x-case": case})
            return time.perf_counter() - started, response

        return sorted(await asyncio.gather(one(), one()), key=lambda pair: pair[0])


def assert_clean_error(response: httpx.Response, backend: FakeUpstream) -> None:
    error = response.json()["error"]
    assert error["message"] and error["type"]
    assert f"127.0.0.1:{backend.port}" not in response.text and backend.url not in response.text


def test_a_full_replica_fails_over_after_pool_wait_not_after_the_held_request(gw: Deployment) -> None:
    gw.fakes["slow"].script = Script(hold_s=HOLD_S)
    (quick_s, quick), (held_s, held) = asyncio.run(timed_pair(gw.stack, "slow"))
    assert held.status_code == 200 and held.headers["x-gateway-model"] == "slow"
    assert "x-gateway-fallback" not in held.headers and held_s >= HOLD_S - 0.1
    assert quick.status_code == 200, quick.text
    assert quick.headers["x-gateway-model"] == "fast"
    assert quick.headers["x-gateway-fallback"] == "error:slow"
    assert quick_s < POOL_WAIT_S + 0.6, quick_s  # far below the 1.5 s the held request took
    assert len(gw.fakes["slow"].posts()) == 1  # the second request never reached the full replica
    assert len(gw.fakes["fast"].posts()) == 1


def test_a_full_replica_without_fallback_is_a_clean_503_within_pool_wait(gw: Deployment) -> None:
    gw.fakes["alone"].script = Script(hold_s=HOLD_S)
    (quick_s, quick), (_, held) = asyncio.run(timed_pair(gw.stack, "alone"))
    assert held.status_code == 200
    assert quick.status_code == 503, quick.text
    assert quick_s < POOL_WAIT_S + 0.6, quick_s
    assert_clean_error(quick, gw.fakes["alone"])
    assert len(gw.fakes["alone"].posts()) == 1


def test_connections_are_reused_after_answers_and_after_clean_streams(gw: Deployment) -> None:
    for stream in (False, False, True, True, True, False, False):
        response = chat(gw, "plain", stream=stream)
        assert response.status_code == 200, response.text
        if stream:
            assert response.text.rstrip().endswith("data: [DONE]")
        time.sleep(0.05)  # the gateway hands the connection back just after the client got the last byte
    posts = gw.fakes["fast"].posts()
    assert len(posts) == 7
    assert len({seen.peer_port for seen in posts}) == 1, [seen.peer_port for seen in posts]


def test_requests_wait_their_turn_on_one_connection_when_the_wait_is_long_enough(gw: Deployment) -> None:
    """max_connections: 1 with a pool wait longer than the queue: every request served, one at a time."""
    hold_s = 0.15
    slow = gw.fakes["slow"]
    slow.script = Script(hold_s=hold_s)
    with deploy(gw.fakes, pool_wait_s=5.0) as stack:

        async def four() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=20) as client:
                url, headers = f"{stack.url}/v1/chat/completions", {"x-case": "slow"}
                return list(await asyncio.gather(*(client.post(url, json=BODY, headers=headers) for _ in "abcd")))

        responses = asyncio.run(four())
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.headers["x-gateway-model"] == "slow" and "x-gateway-fallback" not in r.headers for r in responses)
    posts = slow.posts()
    assert len(posts) == 4 and len({seen.peer_port for seen in posts}) == 1
    arrivals = sorted(seen.at for seen in posts)
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert min(gaps) >= hold_s - 0.02, gaps  # never two at once on the replica


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_keeps_one_replica_out_of_rotation_for_that_long(gw: Deployment, status: int) -> None:
    refusing, serving = gw.fakes["pair_a"], gw.fakes["pair_b"]
    refusing.script = Script(status=status, headers={"retry-after": str(RETRY_AFTER_S)})
    give_up = time.monotonic() + RETRY_AFTER_S + 2  # an earlier test's pause may still run out
    while not refusing.posts() and time.monotonic() < give_up:  # replicas are picked at random
        response = chat(gw, "pair")
        assert response.status_code == 200 and response.headers["x-gateway-model"] == "pair", response.text
    assert len(refusing.posts()) == 1
    refused_at = refusing.posts()[0].at
    inside = 0
    while time.monotonic() < refused_at + RETRY_AFTER_S - 0.5:
        assert chat(gw, "pair").status_code == 200
        inside += 1
    assert inside >= 5  # a replica still in rotation would have been picked (all but 1 in 2**5 runs)
    assert len(refusing.posts()) == 1, "a replica that said Retry-After: 2 was tried again within 2 s"
    time.sleep(max(0.0, refused_at + RETRY_AFTER_S + 0.4 - time.monotonic()))
    refusing.script = Script()  # healed, so no pause is left over for the next test
    for _ in range(30):
        assert chat(gw, "pair").status_code == 200
        if len(refusing.posts()) == 2:
            break
    assert len(refusing.posts()) == 2, "the replica never came back after its Retry-After"
    assert len(serving.posts()) >= inside


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_reaches_the_client_when_nothing_else_is_left(gw: Deployment, status: int) -> None:
    busy = gw.fakes["busy"]
    busy.script = Script(status=status, headers={"retry-after": str(RETRY_AFTER_S)})
    first = chat(gw, "busy")
    assert first.status_code in (429, 503), first.text
    assert 1 <= int(first.headers["retry-after"]) <= RETRY_AFTER_S + 1
    assert_clean_error(first, busy)
    refused_at = busy.posts()[0].at
    again = chat(gw, "busy")
    assert again.status_code in (429, 503)
    assert 1 <= int(again.headers["retry-after"]) <= RETRY_AFTER_S + 1
    assert len(busy.posts()) == 1  # not asked again inside its Retry-After
    time.sleep(max(0.0, refused_at + RETRY_AFTER_S + 0.4 - time.monotonic()))
    busy.script = Script()
    late = chat(gw, "busy")
    assert late.status_code == 200 and len(busy.posts()) == 2
