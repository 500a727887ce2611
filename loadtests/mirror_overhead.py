"""Mirroring overhead: the primary's latency with 10 % of its traffic mirrored to a slow candidate, against 0 %.

One gateway process, one fast primary simulator (``ttft_s`` 0.02) and one slow candidate simulator. Two routes
send to the same primary: ``mirrored`` (chosen by the header ``x-loadtest-mirror: on``) copies a 10 % sample to
the candidate in the background, ``plain`` (``x-loadtest-mirror: off``) does not. Both variants run in the same
process, with the same request bodies and request ids, ``CONCURRENCY`` closed-loop clients, in alternating
blocks (mirror/plain, then plain/mirror, ...); after a mirrored block the shadow copies are left to finish before
the next block starts, so each block pays only for its own shadows. The shadow outcomes come from the gateway's
``llm_gateway_mirror_requests_total``.

Each round also runs a second plain block (``plain-aa``), rotated with the other two: plain-aa/plain is an A/A
ratio, the noise floor that the mirror/plain ratio has to beat before it means anything.

Run: ``.venv/bin/python loadtests/mirror_overhead.py [--quick] [--out DIR]``; results in
``loadtests/results/mirror_overhead.json``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import loadkit
import uvloop
from loadkit import Block, GatewayProcess

from gateway.sim import ModelProfile, SimProfile, SimServer

CONCURRENCY = 16
SAMPLE = 0.1
PRIMARY = {"ttft_s": 0.02, "per_token_s": 0.001, "output_tokens": 16}
"""~35 ms per answer."""
CANDIDATE = {"ttft_s": 0.2, "per_token_s": 0.01, "output_tokens": 16}
"""~350 ms per answer: ten times slower than the primary, so its copies stay in flight long after the primary."""
HEADER = "x-loadtest-mirror"
MIRROR_METRIC = "llm_gateway_mirror_requests_total"

POLICY = """
version: 1
revision: loadtest-mirror
public_models: [assistant]
models:
  primary:   {{kind: base, backends: ["{primary}"]}}
  candidate: {{kind: candidate, sources: [primary], backends: ["{candidate}"]}}
cohorts:
  - name: mirrored
    match: {{header: {{{header}: "on"}}}}
  - name: plain
    default: true
routes:
  mirrored:
    target: primary
    mirror: {{to: [candidate], sample: {sample}, max_inflight: 32, timeout_s: 30}}
  plain: {{target: primary}}
"""


@dataclass(frozen=True)
class Plan:
    rounds: int
    requests_per_block: int

    @classmethod
    def for_run(cls, quick: bool) -> Plan:
        return cls(rounds=1, requests_per_block=64) if quick else cls(rounds=12, requests_per_block=300)


async def _shadow_outcomes(gateway: GatewayProcess, session: aiohttp.ClientSession) -> dict[str, int]:
    text = await gateway.metrics(session)
    outcomes: dict[str, int] = {}
    for labels, value in loadkit.metric_samples(text, MIRROR_METRIC):
        if labels.get("model") == "candidate":
            outcomes[labels["outcome"]] = outcomes.get(labels["outcome"], 0) + int(value)
    return outcomes


async def _shadows_done(gateway: GatewayProcess, session: aiohttp.ClientSession, candidate: SimServer) -> None:
    """Wait until the candidate is idle and the gateway's shadow counters stop moving (at most 30 s)."""
    deadline = time.monotonic() + 30
    last: dict[str, int] | None = None
    while time.monotonic() < deadline:
        stats = candidate.stats()["models"]["candidate"]
        outcomes = await _shadow_outcomes(gateway, session)
        if stats["running"] == 0 and stats["waiting"] == 0 and outcomes == last:
            return
        last = outcomes
        await asyncio.sleep(0.1)


def _headers(mirror: str, id_prefix: str) -> Callable[[int], dict[str, str]]:
    """Every variant sends the same header names and request ids (the mirror sample is a hash of the id)."""
    return lambda i: {HEADER: mirror, "x-request-id": f"{id_prefix}-{i}"}


def _verdict(ratio: dict[str, float], noise: dict[str, float], shadows: int, mirrored_requests: int) -> str:
    """Each latency ratio next to the same ratio between two identical plain variants (the noise floor)."""
    parts, beyond = [], []
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p99_block_median_ms", "p99 block-median")):
        parts.append(f"{label} x{ratio[key]:.3f} (A/A x{noise[key]:.3f})")
        if abs(ratio[key] - 1) > max(0.03, abs(noise[key] - 1)):
            beyond.append(label)
    judged = f"beyond noise: {', '.join(beyond)}" if beyond else "all within noise"
    share = shadows / max(mirrored_requests, 1)
    return f"mirror/no-mirror {'; '.join(parts)}: {judged}; {shadows} shadow copies ({share:.1%} of mirrored requests)"


def _overhead(blocks: list[Block]) -> dict[str, float]:
    """The gateway's own view of the time it added (``x-gateway-overhead-ms``), p50 and p99."""
    values = [float(s.headers["x-gateway-overhead-ms"]) for b in blocks for s in b.samples if s.ok and s.headers]
    return {
        "overhead_p50_ms": round(loadkit.percentile(values, 50), 3),
        "overhead_p99_ms": round(loadkit.percentile(values, 99), 3),
    }


async def main() -> int:
    args = loadkit.parse_args(__doc__)
    plan = Plan.for_run(args.quick)
    models = {"primary": ModelProfile(**PRIMARY), "candidate": ModelProfile(**CANDIDATE)}
    profile = SimProfile(seed=args.seed, models=models)
    started = time.perf_counter()
    variants = ("mirror", "plain", "plain-aa")
    blocks: dict[str, list[Block]] = {v: [] for v in variants}
    with loadkit.workdir() as tmp:
        async with AsyncExitStack() as stack:
            sims = await loadkit.start_sims(stack, {"primary": ["primary"], "candidate": ["candidate"]}, profile)
            policy = POLICY.format(
                primary=sims["primary"].url, candidate=sims["candidate"].url, header=HEADER, sample=SAMPLE
            )
            gateway = await stack.enter_async_context(GatewayProcess(policy, "mirror", Path(tmp)))
            session = await stack.enter_async_context(loadkit.new_session(CONCURRENCY))
            control = await stack.enter_async_context(aiohttp.ClientSession())
            warm = loadkit.chat_body("assistant", random.Random(0))
            await loadkit.closed_loop(
                session,
                loadkit.chat_sender(gateway.url, [warm], lambda i: {HEADER: "off"}),
                CONCURRENCY * 4,
                CONCURRENCY,
            )
            before = await _shadow_outcomes(gateway, control)
            for r in range(plan.rounds):
                bodies = random.Random(f"{args.seed}:{r}")
                workload = [loadkit.chat_body("assistant", bodies) for _ in range(plan.requests_per_block)]
                for variant in variants[r % 3 :] + variants[: r % 3]:
                    mirror = "on" if variant == "mirror" else "off"
                    send = loadkit.chat_sender(gateway.url, workload, _headers(mirror, f"loadtest-{args.seed}-{r}"))
                    block = await loadkit.closed_loop(session, send, plan.requests_per_block, CONCURRENCY)
                    blocks[variant].append(block)
                    await _shadows_done(gateway, control, sims["candidate"])
            after = await _shadow_outcomes(gateway, control)
            candidate_stats = sims["candidate"].stats()["models"]["candidate"]
    mirrored, plain = loadkit.summarize(blocks["mirror"]), loadkit.summarize(blocks["plain"])
    mirrored.update(_overhead(blocks["mirror"]))
    plain.update(_overhead(blocks["plain"]))
    ratio = loadkit.ratios(mirrored, plain)
    ratio["overhead_p99_ms"] = round(mirrored["overhead_p99_ms"] / plain["overhead_p99_ms"], 3)
    noise = loadkit.ratios(loadkit.summarize(blocks["plain-aa"]), plain)
    shadows = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))}
    shadow_total = sum(shadows.values())
    verdict = _verdict(ratio, noise, shadow_total, mirrored["requests"])
    rows: list[list[object]] = []
    for name, q in (("no mirror", plain), (f"mirror {SAMPLE:.0%}", mirrored), ("ratio mirror/none", ratio)):
        rows.append([name, *(q[k] for k in ("p50_ms", "p99_ms", "p99_block_median_ms", "req_per_s"))])
        rows[-1].append(q["overhead_p99_ms"])
    rows.append(["A/A plain-aa/plain", *(noise[k] for k in ("p50_ms", "p99_ms", "p99_block_median_ms", "req_per_s"))])
    rows[-1].append("")
    headers = ["variant", "p50 ms", "p99 ms", "p99 block-median", "req/s", "gw overhead p99 ms"]
    print(loadkit.table(headers, rows))
    print("shadow outcomes (llm_gateway_mirror_requests_total):", shadows)
    print(f"verdict: {verdict}")
    output: dict[str, Any] = {
        "benchmark": "mirror_overhead",
        "quick": args.quick,
        "seed": args.seed,
        "concurrency": CONCURRENCY,
        "sample": SAMPLE,
        "primary": PRIMARY,
        "candidate": CANDIDATE,
        "rounds": plan.rounds,
        "requests_per_block": plan.requests_per_block,
        "wall_s": round(time.perf_counter() - started, 1),
        "no_mirror": plain,
        "mirror": mirrored,
        "ratio_mirror_over_no_mirror": ratio,
        "ratio_aa_plain_over_plain": noise,
        "shadow_outcomes": shadows,
        "candidate_shadow_requests_seen": candidate_stats["shadow"],
        "verdict": verdict,
    }
    path = loadkit.write_results(args.out, "mirror_overhead", output)
    print(f"results: {path}")
    return 1 if mirrored["errors"] or plain["errors"] else 0


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        raise SystemExit(runner.run(main()))
