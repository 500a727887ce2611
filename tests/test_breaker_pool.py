"""CircuitBreaker and BackendPool as pure objects with an injected clock (no sleeping, no servers)."""

from __future__ import annotations

import random
from collections import Counter

from gateway.policy.schema import BreakerSpec
from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.health import parse_vllm_load
from gateway.upstream.pool import Backend, BackendPool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_failures_open_then_half_open_probe_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSpec(consecutive_failures=3, open_s=10, half_open_probes=1), clock)
    for _ in range(2):
        breaker.record(ok=False)
    assert breaker.state == "closed"
    breaker.record(ok=False)
    assert breaker.state == "open"
    assert not breaker.available() and not breaker.acquire()
    clock.now += 9.9
    assert breaker.state == "open"
    clock.now += 0.2
    assert breaker.state == "half_open"
    assert breaker.acquire()
    assert not breaker.acquire()  # one probe at a time
    breaker.record(ok=True)
    assert breaker.state == "closed"
    assert breaker.opened_count == 1


def test_failed_probe_reopens_and_cancelled_probe_frees_its_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSpec(consecutive_failures=1, open_s=5), clock)
    breaker.record(ok=False)
    clock.now += 5
    assert breaker.acquire()
    breaker.release()
    assert breaker.acquire()
    breaker.record(ok=False)
    assert breaker.state == "open"
    assert breaker.last_reason == "a half-open probe failed"


def test_error_rate_needs_min_requests_within_window() -> None:
    clock = Clock()
    spec = BreakerSpec(consecutive_failures=100, error_rate=0.5, window_s=10, min_requests=10)
    breaker = CircuitBreaker(spec, clock)
    for i in range(9):
        breaker.record(ok=i % 2 == 0)
    assert breaker.state == "closed"  # 4/9 failed, and under min_requests anyway
    breaker.record(ok=False)
    assert breaker.state == "open"  # 5/10
    assert "error rate 5/10" in breaker.last_reason


def test_old_outcomes_leave_the_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSpec(consecutive_failures=100, window_s=10, min_requests=4), clock)
    for _ in range(3):
        breaker.record(ok=False)
    clock.now += 11
    breaker.record(ok=True)
    breaker.record(ok=False)
    assert breaker.state == "closed"


def test_latency_trip() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSpec(min_requests=5, max_p99_s=1.0), clock)
    for _ in range(4):
        breaker.record(ok=True, latency_s=0.1)
    assert breaker.state == "closed"
    breaker.record(ok=True, latency_s=3.0)
    assert breaker.state == "open"


def backends(n: int) -> list[Backend]:
    return [Backend("m", i, f"http://10.0.0.{i}:8000", "m", CircuitBreaker(BreakerSpec())) for i in range(n)]


def test_two_choices_prefers_the_less_loaded_replica() -> None:
    replicas = backends(3)
    replicas[0].inflight = 50
    pool = BackendPool("m", replicas, random.Random(3).random)
    picks = Counter(pool.order(1)[0].index for _ in range(3000))
    assert picks[0] == 0  # the two choices are distinct replicas, and the busy one always loses
    assert abs(picks[1] - picks[2]) < 300
    assert len(pool.order(5)) == 3


def test_unavailable_replicas_are_skipped_with_a_reason() -> None:
    replicas = backends(2)
    pool = BackendPool("m", replicas)
    replicas[0].healthy = False
    assert [b.index for b in pool.order(2)] == [1]
    replicas[1].drained = True
    assert pool.order(2) == []
    assert pool.unavailable_reason() == "unhealthy"
    replicas[0].drained = True
    assert pool.unavailable_reason() == "manual"
    replicas[0].drained = False
    replicas[0].healthy = True
    for _ in range(5):
        replicas[0].breaker.record(ok=False)
    assert pool.unavailable_reason() == "breaker"


def test_prefix_affinity_sticks_spreads_and_yields_to_saturation() -> None:
    replicas = backends(4)
    pool = BackendPool("m", replicas, random.Random(1).random)
    chosen = {pool.order(1, f"system: prompt {k}")[0].index for _ in range(20) for k in [7]}
    assert len(chosen) == 1
    spread = Counter(pool.order(1, f"system: prompt {k}")[0].index for k in range(400))
    assert len(spread) == 4 and min(spread.values()) > 50
    favourite = pool.order(1, "hot prefix")[0]
    favourite.inflight = 20
    assert pool.order(1, "hot prefix")[0] is not favourite
    favourite.inflight = 0
    favourite.healthy = False
    assert pool.order(1, "hot prefix")[0] is not favourite


def test_scraped_vllm_load() -> None:
    text = (
        b"# HELP vllm:num_requests_waiting x\n"
        b'vllm:num_requests_waiting{engine="0",model_name="m"} 7.0\n'
        b'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
        b'vllm:num_requests_waiting{engine="1",model_name="m"} 2.0\n'
        b"vllm:num_requests_waiting_total 99\n"
    )
    assert parse_vllm_load(text) == (9.0, 3.0)
    replicas = backends(2)
    replicas[0].waiting = 30
    pool = BackendPool("m", replicas, random.Random(0).random, scrape_load=True)
    assert all(pool.order(1)[0].index == 1 for _ in range(50))
