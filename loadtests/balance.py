"""Load-aware balancing: does ``health.scrape_load: true`` help when two replicas of one model are uneven?

One model, two simulated vLLM replicas: A is slow and has few batch slots (``max_num_seqs``), so it queues; B is
fast. Two gateway processes share the replicas and differ only in ``scrape_load`` (both scrape every 0.5 s). The
same closed-loop workload (``CONCURRENCY`` clients, same seed) drives each gateway in alternating blocks
(off/on, then on/off, ...), so drift on a noisy machine hits both alike. Scenarios:

* ``uneven``: only the gateway's traffic. It already counts its own requests in flight on A, so scraping A's
  queue can add little (and counts the gateway's own queued requests twice).
* ``uneven+external``: another client keeps A busy directly, traffic the gateway never sees. Only vLLM's
  scraped ``num_requests_waiting`` tells the gateway that A is backed up.
* ``even``: a control, two identical fast replicas: scraping must not make things worse.

Run: ``.venv/bin/python loadtests/balance.py [--quick] [--out DIR]``; results in ``loadtests/results/balance.json``.
"""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import loadkit
import uvloop
from loadkit import Block, GatewayProcess

from gateway.sim import ModelProfile, SimProfile, SimServer

MODEL = "llm"
CONCURRENCY = 16
SCRAPE_INTERVAL_S = 0.5
SLOW = {"ttft_s": 0.05, "per_token_s": 0.01, "output_tokens": 16, "max_num_seqs": 4}
"""~0.2 s per answer and 4 batch slots: about 20 answers/s before it queues."""
FAST = {"ttft_s": 0.02, "per_token_s": 0.002, "output_tokens": 16, "max_num_seqs": 64}
"""~0.05 s per answer, room for every client."""
EXTERNAL_CLIENTS = 16
"""Closed-loop clients that load replica A directly: with A's 4 slots, about 12 of them always wait."""

POLICY = """
version: 1
revision: loadtest-balance
public_models: [assistant]
models:
  {model}: {{kind: base, backends: ["{a}", "{b}"]}}
cohorts:
  - name: all
    default: true
routes:
  all: {{target: {model}}}
health:
  interval_s: {interval}
  scrape_load: {scrape}
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    replica_a: dict[str, Any]
    replica_b: dict[str, Any]
    external_clients: int


SCENARIOS = [
    Scenario("uneven", SLOW, FAST, 0),
    Scenario("uneven+external", SLOW, FAST, EXTERNAL_CLIENTS),
    Scenario("even", FAST, FAST, 0),
]


@dataclass(frozen=True)
class Plan:
    rounds: int
    requests_per_block: int
    settle_s: float

    @classmethod
    def for_run(cls, quick: bool) -> Plan:
        return cls(rounds=1, requests_per_block=48, settle_s=0.1) if quick else cls(6, 240, 0.6)


class ExternalLoad:
    """Closed-loop clients sending straight to one replica, bypassing the gateway; ``sent`` counts their requests."""

    def __init__(self, url: str, clients: int, seed: int) -> None:
        self._url = url
        self._clients = clients
        self._rng = random.Random(seed)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0

    async def __aenter__(self) -> ExternalLoad:
        if self._clients:
            self._session = loadkit.new_session(self._clients)
            self._tasks = [asyncio.create_task(self._client(self._session)) for _ in range(self._clients)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        if self._session is not None:
            await self._session.close()

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            self.sent += 1
            await loadkit.post_chat(session, self._url, loadkit.chat_body(MODEL, self._rng))


def _configure(sims: dict[str, SimServer], scenario: Scenario) -> None:
    for name, changes in (("a", scenario.replica_a), ("b", scenario.replica_b)):
        sims[name].configure({"reset_profile": True, "model": MODEL, "set": changes})


async def _drained(sims: dict[str, SimServer]) -> None:
    """Wait until no request runs or waits on either replica (the last block's, or the external load's)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = [s.stats()["models"][MODEL] for s in sims.values()]
        if all(st["running"] == 0 and st["waiting"] == 0 for st in stats):
            return
        await asyncio.sleep(0.02)


async def _run_scenario(
    scenario: Scenario,
    sims: dict[str, SimServer],
    gateways: dict[str, GatewayProcess],
    sessions: dict[str, aiohttp.ClientSession],
    plan: Plan,
    seed: int,
) -> dict[str, Any]:
    _configure(sims, scenario)
    blocks: dict[str, list[Block]] = {"off": [], "on": []}
    to_slow = {"off": 0, "on": 0}
    async with ExternalLoad(sims["a"].url, scenario.external_clients, seed + 1) as external:
        if scenario.external_clients:  # both gateways have scraped the external queue
            await asyncio.sleep(SCRAPE_INTERVAL_S + 0.1 + plan.settle_s)
        for r in range(plan.rounds):
            for variant in ("off", "on") if r % 2 == 0 else ("on", "off"):
                gateway = gateways[variant]
                # The same request bodies for both variants of a round.
                bodies = random.Random(f"{seed}:{scenario.name}:{r}")
                workload = [loadkit.chat_body("assistant", bodies) for _ in range(plan.requests_per_block)]
                send = loadkit.chat_sender(gateway.url, workload)
                before_a, before_ext = sims["a"].stats()["models"][MODEL]["requests"], external.sent
                blocks[variant].append(
                    await loadkit.closed_loop(sessions[variant], send, plan.requests_per_block, CONCURRENCY)
                )
                after_a = sims["a"].stats()["models"][MODEL]["requests"]
                to_slow[variant] += (after_a - before_a) - (external.sent - before_ext)
                await asyncio.sleep(plan.settle_s)  # the scrape forgets this block's queue before the next one
    await _drained(sims)
    off, on = loadkit.summarize(blocks["off"]), loadkit.summarize(blocks["on"])
    for variant, summary in (("off", off), ("on", on)):
        summary["share_to_a"] = round(max(to_slow[variant], 0) / max(summary["requests"], 1), 3)
    return {
        "replica_a": scenario.replica_a,
        "replica_b": scenario.replica_b,
        "external_clients": scenario.external_clients,
        "scrape_load_false": off,
        "scrape_load_true": on,
        "ratio_true_over_false": loadkit.ratios(on, off),
    }


def _verdict(results: dict[str, dict[str, Any]]) -> str:
    """Judge the uneven scenarios against the noise floor of ``even``, where both variants behave alike.

    With two identical fast replicas nothing ever waits, the scraped queue is 0 and ``scrape_load`` changes no
    decision: whatever its true/false ratios show is the noise of this machine.
    """
    aa = results["even"]["ratio_true_over_false"]
    tolerance = {k: max(0.05, abs(aa[k] - 1)) for k in ("p99_ms", "req_per_s")}
    parts, gains, losses = [], [], []
    for name in ("uneven+external", "uneven"):
        q = results[name]["ratio_true_over_false"]
        parts.append(f"{name}: p99 x{q['p99_ms']:.2f}, mean x{q['mean_ms']:.2f}, req/s x{q['req_per_s']:.2f}")
        if q["p99_ms"] < 1 - tolerance["p99_ms"] or q["req_per_s"] > 1 + tolerance["req_per_s"]:
            gains.append(name)
        if q["p99_ms"] > 1 + tolerance["p99_ms"] or q["req_per_s"] < 1 - tolerance["req_per_s"]:
            losses.append(name)
    parts.append(f"A/A noise (even): p99 ±{tolerance['p99_ms']:.0%}, req/s ±{tolerance['req_per_s']:.0%}")
    if gains and not losses:
        head = f"scrape_load=true helps ({', '.join(gains)}) and loses nowhere beyond noise"
    elif gains:
        head = f"scrape_load=true helps ({', '.join(gains)}) but loses ({', '.join(losses)})"
    elif losses:
        head = f"scrape_load=true loses ({', '.join(losses)})"
    else:
        head = "scrape_load=true makes no difference beyond noise"
    return f"{head}; true/false {'; '.join(parts)}"


async def main() -> int:
    args = loadkit.parse_args(__doc__)
    plan = Plan.for_run(args.quick)
    profile = SimProfile(seed=args.seed, default=ModelProfile(**FAST))
    started = time.perf_counter()
    with loadkit.workdir() as tmp:
        async with AsyncExitStack() as stack:
            sims = await loadkit.start_sims(stack, {"a": [MODEL], "b": [MODEL]}, profile)
            gateways = {}
            for variant, scrape in (("off", "false"), ("on", "true")):
                policy = POLICY.format(
                    model=MODEL, a=sims["a"].url, b=sims["b"].url, interval=SCRAPE_INTERVAL_S, scrape=scrape
                )
                gateways[variant] = GatewayProcess(policy, f"balance-{variant}", Path(tmp))
            await asyncio.gather(*(stack.enter_async_context(g) for g in gateways.values()))
            sessions = {v: await stack.enter_async_context(loadkit.new_session(CONCURRENCY)) for v in gateways}
            for variant, gateway in gateways.items():  # warm up: connections, first-request code paths
                warm = loadkit.chat_body("assistant", random.Random(0))
                await loadkit.closed_loop(
                    sessions[variant],
                    loadkit.chat_sender(gateway.url, [warm]),
                    CONCURRENCY * 2,
                    CONCURRENCY,
                )
            results = {}
            for scenario in SCENARIOS:
                results[scenario.name] = await _run_scenario(scenario, sims, gateways, sessions, plan, args.seed)
    verdict = _verdict(results)
    rows: list[list[object]] = []
    figures = ("p50_ms", "p99_ms", "mean_ms", "req_per_s")
    for name, r in results.items():
        for variant in ("scrape_load_false", "scrape_load_true"):
            s = r[variant]
            rows.append([name, variant.removeprefix("scrape_load_"), *(s[k] for k in figures), s["share_to_a"]])
        q = r["ratio_true_over_false"]
        rows.append([name, "ratio true/false", *(q[k] for k in figures), ""])
    headers = ["scenario", "scrape_load", "p50 ms", "p99 ms", "mean ms", "req/s", "share to A"]
    print(loadkit.table(headers, rows))
    print(f"verdict: {verdict}")
    output = {
        "benchmark": "balance",
        "quick": args.quick,
        "seed": args.seed,
        "concurrency": CONCURRENCY,
        "scrape_interval_s": SCRAPE_INTERVAL_S,
        "rounds": plan.rounds,
        "requests_per_block": plan.requests_per_block,
        "wall_s": round(time.perf_counter() - started, 1),
        "scenarios": results,
        "verdict": verdict,
    }
    path = loadkit.write_results(args.out, "balance", output)
    print(f"results: {path}")
    errors = sum(r[v]["errors"] for r in results.values() for v in ("scrape_load_false", "scrape_load_true"))
    return 1 if errors else 0


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        raise SystemExit(runner.run(main()))
