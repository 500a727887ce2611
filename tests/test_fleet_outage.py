"""Fleet state when Redis misbehaves: stalled (``DEBUG SLEEP``), killed, and restarted empty, all during traffic
through three gateway instances. Requests must not notice; the fleet must agree again once Redis is back."""

from __future__ import annotations

import hashlib
import itertools
import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fleetkit import AUTH, Fleet, RedisServer, wait_until

KEY = "outage-key"
POLICY = f"""
version: 1
public_models: [assistant]
models:
  merged-v1: {{kind: merged, sources: [source-a], backends: ["${{sim}}"]}}
  source-a:  {{kind: source, backends: ["${{sim}}"]}}
cohorts:
  - {{name: manual, match: {{header: {{x-topic: manual}}}}}}
  - {{name: chat, default: true}}
routes:
  manual: {{target: merged-v1, fallback: sources}}
  chat:   {{target: merged-v1, fallback: sources}}
evals:
  gates:
    - {{models: [merged-v1], cohorts: [manual], evaluators: [json_valid], max_fail_rate: 0.2}}
keys:
  app:
    key: "sha256:{hashlib.sha256(KEY.encode()).hexdigest()}"
    rate_limit: {{requests_per_min: 100000, tokens_per_min: 10000000}}
"""
UP = "llm_gateway_state_backend_up "


class Traffic:
    """Closed-loop clients spreading chat requests over the instances; every answer's status and latency kept."""

    def __init__(self, urls: list[str], clients: int = 3) -> None:
        self.samples: list[tuple[float, int, float]] = []  # (started, status, seconds)
        self._urls = urls
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _run(self, offset: int) -> None:
        body = {"model": "assistant", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
        headers = {"authorization": f"Bearer {KEY}"}
        urls = itertools.islice(itertools.cycle(self._urls), offset, None)
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status = client.post(f"{next(urls)}/v1/chat/completions", json=body, headers=headers).status_code
                except httpx.HTTPError:
                    status = 0
                self.samples.append((started, status, time.monotonic() - started))

    def between(self, start: float, end: float) -> list[tuple[float, int, float]]:
        return [s for s in list(self.samples) if start <= s[0] < end]


def p99(samples: list[tuple[float, int, float]]) -> float:
    return statistics.quantiles([s[2] for s in samples], n=100)[98]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_a_stalled_killed_and_emptied_redis_changes_no_answer_and_the_fleet_agrees_again(
    redis_server: RedisServer,
) -> None:
    with Fleet(POLICY, ["merged-v1", "source-a"], redis_server.url) as fleet, Traffic(fleet.urls) as traffic:
        n = len(fleet.urls)
        assert all(fleet.metric(i, UP) == 1.0 for i in range(n))
        time.sleep(3)
        calm_start = time.monotonic() - 3

        stall_start = time.monotonic()
        staller = threading.Thread(target=lambda: redis_server.client().execute_command("DEBUG", "SLEEP", "3"))
        staller.start()
        assert wait_until(lambda: all(fleet.metric(i, UP) == 0.0 for i in range(n)), 3) is not None
        staller.join()
        assert wait_until(lambda: all(fleet.metric(i, UP) == 1.0 for i in range(n)), 5) is not None
        stall_end = time.monotonic()

        redis_server.stop()  # killed: everything it held is gone
        assert wait_until(lambda: all(fleet.metric(i, UP) == 0.0 for i in range(n)), 3) is not None
        tripped = httpx.post(f"{fleet.urls[0]}/admin/gates/merged-v1/manual", json={"action": "trip"}, headers=AUTH)
        assert tripped.status_code == 200 and tripped.json() == {
            "model": "merged-v1",
            "cohort": "manual",
            "tripped": True,
            "reason": "tripped by hand",
            "shared": False,  # Redis is down: it holds here, and is shared when Redis returns
        }
        time.sleep(2)
        redis_server.start()  # same port, empty

        def agreed() -> bool:
            return all(fleet.metric(i, UP) == 1.0 and fleet.gate(i, "merged-v1", "manual")["tripped"] for i in range(n))

        took = wait_until(agreed, 8)
        assert took is not None and took <= 5, took
        outage_end = time.monotonic()
        time.sleep(1)

    calm = traffic.between(calm_start, stall_start)
    troubled = traffic.between(stall_start, outage_end)
    assert len(calm) > 50 and len(troubled) > 100, (len(calm), len(troubled))
    failed = [s for s in traffic.samples if s[1] != 200]
    assert failed == [], failed[:5]
    # nothing waited for Redis: a request that did would take the stall's seconds
    assert max(s[2] for s in troubled) < 1.0, max(s[2] for s in troubled)
    assert p99(troubled) <= max(3 * p99(calm), p99(calm) + 0.05), (p99(calm), p99(troubled))
    assert stall_end - stall_start < 10
    for gateway in fleet.gateways:
        log = gateway.output()
        assert log.count(" unreachable (") == 2, log  # one line per outage: the stall, then the kill
        assert log.count("reachable again") == 2, log
