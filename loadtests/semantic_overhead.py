"""Semantic cohorts' cost: a request's latency with a ``semantic`` rule in the policy, its vector cold and warm,
against the same policy without it, in one run.

Two gateway processes on the same simulated chat model (``PRIMARY``, ~17 ms an answer): ``plain`` classifies with
a regex rule and the default cohort; ``semantic`` adds a semantic rule (three billing examples) whose embedding model
is a simulator in a process of its own (``llm-gateway sim``, as a real embedder is a server of its own) that answers
at once: what is measured is the gateway's own work and the loopback call, not a model's, whose time a cold request
adds on top. Workloads:

* **cold**: each request's text is new (an order number no other request has) and misses the regex, so the
  semantic rule decides it: one embedding call each;
* **warm**: 16 texts that miss the regex, embedded before the first block, sent over and over: every vector from
  the cache;
* **skipped**: new texts the regex rule (before the semantic one, in the same ``any``) catches: no vector needed.

Variants, in rotated order each round, at concurrency 1 and 8 (closed loop): ``plain`` (cold texts: the plain
policy does not care), ``semantic-cold``, ``semantic-warm``, ``semantic-skipped``, and ``plain-aa``, a second plain
block whose difference to ``plain`` is the noise floor. The embedding server's request count checks the workloads
did what they say (one call per cold request, none warm or skipped), the gateway's cohort header that every
semantic variant's request reached the billing cohort.

Run: ``.venv/bin/python loadtests/semantic_overhead.py [--quick] [--out DIR]`` (``make bench`` runs it after
``overhead.py``); results in ``loadtests/results/semantic_overhead.json``. About 50 s.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import loadkit
import uvloop
from loadkit import Block, GatewayProcess

from gateway.sim import ModelProfile, SimProfile

PRIMARY = {"ttft_s": 0.01, "per_token_s": 0.001, "output_tokens": 8}
"""~17 ms per answer."""
EMBEDDER = {"kind": "embedding", "ttft_s": 0.0}
EXAMPLES = ["charged twice on my card", "refund my payment", "why is my bill higher this month"]
WARM_TEXTS = 16

PLAIN = """
version: 1
revision: loadtest-semantic-plain
public_models: [assistant]
models:
  primary: {{kind: base, backends: ["{primary}"], served_name: assistant}}
cohorts:
  - name: billing
    match: {{content: "(?i)invoice|chargeback"}}
  - name: general
    default: true
routes:
  billing: {{target: primary}}
  general: {{target: primary}}
"""
SEMANTIC = """
version: 1
revision: loadtest-semantic
public_models: [assistant]
models:
  primary: {{kind: base, backends: ["{primary}"], served_name: assistant}}
  embedder: {{kind: embedding, backends: ["{embedder}"]}}
cohorts:
  - name: billing
    match:
      any:
        - {{content: "(?i)invoice|chargeback"}}
        - {{semantic: {{model: embedder, examples: {examples}, threshold: 0.2, timeout_s: 1.0}}}}
  - name: general
    default: true
routes:
  billing: {{target: primary}}
  general: {{target: primary}}
"""
VARIANTS = ("plain", "semantic-cold", "semantic-warm", "semantic-skipped", "plain-aa")


@dataclass(frozen=True)
class Scenario:
    concurrency: int
    rounds: int
    requests_per_block: int

    @property
    def key(self) -> str:
        return f"c{self.concurrency}"


def scenarios(quick: bool) -> list[Scenario]:
    """Concurrency 1: the latency a request pays alone; 8: with the gateway's core busy, its CPU cost shows too."""
    if quick:
        return [Scenario(1, 1, 20), Scenario(8, 1, 40)]
    return [Scenario(1, 3, 80), Scenario(8, 4, 250)]


class EmbedderProcess:
    """``llm-gateway sim`` serving the embedding model on a free loopback port, ready on enter, stopped on exit."""

    def __init__(self, workdir: Path, seed: int) -> None:
        self.profile = workdir / "embedder-profile.json"
        self.profile.write_text(json.dumps({"seed": seed, "models": {"embedder": EMBEDDER}}), encoding="utf-8")
        self.port = loadkit.free_port()
        self.url = f"http://{loadkit.HOST}:{self.port}"
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> EmbedderProcess:
        argv = ["-m", "gateway", "sim", "--host", loadkit.HOST, "--port", str(self.port), "--model", "embedder"]
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, *argv, "--profile", str(self.profile), cwd=loadkit.ROOT, stdout=asyncio.subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline and self._proc.returncode is None:
                try:
                    async with session.get(self.url + "/health") as response:
                        if response.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        await self.__aexit__(None, None, None)
        raise RuntimeError("the embedding simulator did not start")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await proc.wait()

    async def calls(self, session: aiohttp.ClientSession) -> int:
        """Embedding requests it has answered so far."""
        async with session.get(self.url + "/sim/stats") as response:
            return int((await response.json())["models"]["embedder"]["completed"])


def cold_texts(tag: str, count: int, regex: bool = False) -> list[dict[str, Any]]:
    """``count`` billing questions no other block sends (the order number is unique to ``tag`` and position); with
    ``regex``, ones the regex rule catches (the word "invoice"), so the semantic rule is never evaluated."""
    noun = "invoice" if regex else "card"
    return [_body(f"I was charged twice on my {noun} for order {tag}{i:06d}") for i in range(count)]


def warm_texts() -> list[dict[str, Any]]:
    return [_body(f"why is my bill higher this month, account {i}") for i in range(WARM_TEXTS)]


def _body(text: str) -> dict[str, Any]:
    return {"model": "assistant", "messages": [{"role": "user", "content": text}], "max_tokens": 8}


async def _block(
    session: aiohttp.ClientSession, gateway: GatewayProcess, bodies: list[dict[str, Any]], requests: int, clients: int
) -> Block:
    return await loadkit.closed_loop(session, loadkit.chat_sender(gateway.url, bodies), requests, clients)


def _cohorts(blocks: list[Block]) -> dict[str, int]:
    seen: dict[str, int] = {}
    for sample in (s for b in blocks for s in b.samples):
        name = sample.headers.get("x-gateway-cohort", "?")
        seen[name] = seen.get(name, 0) + 1
    return seen


def _verdict(key: str, added: dict[str, float], noise: float) -> str:
    parts = [f"{name} p50 {value:+.2f} ms" for name, value in added.items()]
    return f"{key}: {', '.join(parts)} against plain; A/A p50 {noise:+.2f} ms (the noise floor)"


@dataclass
class Measured:
    blocks: dict[str, list[Block]]
    embed_calls: dict[str, int]


async def measure(
    scenario: Scenario, gateways: dict[str, GatewayProcess], embedder: EmbedderProcess, seed: int
) -> Measured:
    """Every variant ``scenario.rounds`` times, in rotated order; cold texts are new to every block."""
    measured = Measured({v: [] for v in VARIANTS}, {v: 0 for v in VARIANTS})
    warm = warm_texts()
    count, clients = scenario.requests_per_block, scenario.concurrency
    async with loadkit.new_session(clients) as session, aiohttp.ClientSession() as control:
        for gateway in gateways.values():  # connections, pools, and the warm texts' vectors
            await _block(session, gateway, warm, max(clients * 4, len(warm)), clients)
        for r in range(scenario.rounds):
            for variant in VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]:
                target = gateways["plain" if variant.startswith("plain") else "semantic"]
                tag = f"{seed}{clients}{r}{VARIANTS.index(variant)}"
                bodies = warm if variant == "semantic-warm" else cold_texts(tag, count, variant == "semantic-skipped")
                before = await embedder.calls(control)
                measured.blocks[variant].append(await _block(session, target, bodies, count, clients))
                measured.embed_calls[variant] += await embedder.calls(control) - before
    return measured


def report(scenario: Scenario, measured: Measured) -> dict[str, Any]:
    summaries = {v: loadkit.summarize(measured.blocks[v]) for v in VARIANTS}
    base = summaries["plain"]
    added = {v: round(summaries[v]["p50_ms"] - base["p50_ms"], 3) for v in VARIANTS if v.startswith("semantic")}
    noise = round(summaries["plain-aa"]["p50_ms"] - base["p50_ms"], 3)
    ratios = {v: loadkit.ratios(summaries[v], base) for v in VARIANTS if v != "plain"}
    rows: list[list[object]] = []
    for v in VARIANTS:
        s = summaries[v]
        p50_ratio = ratios.get(v, {}).get("p50_ms", 1.0)
        rows.append([v, s["p50_ms"], s["p99_ms"], s["req_per_s"], p50_ratio])
        rows[-1] += [round(s["p50_ms"] - base["p50_ms"], 3), measured.embed_calls[v]]
    print(f"\nconcurrency {scenario.concurrency}, {scenario.rounds} x {scenario.requests_per_block} requests a variant")
    print(loadkit.table(["variant", "p50 ms", "p99 ms", "req/s", "p50 x plain", "p50 added ms", "embed calls"], rows))
    cohorts = {v: _cohorts(measured.blocks[v]) for v in VARIANTS}
    return {
        **{"concurrency": scenario.concurrency, "rounds": scenario.rounds},
        "requests_per_block": scenario.requests_per_block,
        "variants": summaries,
        "ratios_over_plain": ratios,
        "added_p50_ms": added,
        "aa_added_p50_ms": noise,
        "embedding_calls": measured.embed_calls,
        "cohorts": cohorts,
        "verdict": _verdict(scenario.key, added, noise),
    }


def _sound(result: dict[str, Any]) -> bool:
    """No errors, every request of the semantic variants in the billing cohort, none of the skipped ones embedded."""
    variants = result["variants"]
    semantic = [v for v in VARIANTS if v.startswith("semantic")]
    decided = sum(result["cohorts"][v].get("billing", 0) for v in semantic)
    skipped = result["embedding_calls"]["semantic-skipped"] == 0
    errors = any(s["errors"] for s in variants.values())
    return not errors and skipped and decided == sum(variants[v]["requests"] for v in semantic)


async def main() -> int:
    args = loadkit.parse_args(__doc__)
    profile = SimProfile(seed=args.seed, models={"assistant": ModelProfile(**PRIMARY)})
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with loadkit.workdir() as tmp:
        async with AsyncExitStack() as stack:
            sims = await loadkit.start_sims(stack, {"chat": ["assistant"]}, profile)
            embedder = await stack.enter_async_context(EmbedderProcess(Path(tmp), args.seed))
            urls = {"primary": sims["chat"].url, "embedder": embedder.url}
            gateways = {
                "plain": await stack.enter_async_context(GatewayProcess(PLAIN.format(**urls), "plain", Path(tmp))),
                "semantic": await stack.enter_async_context(
                    GatewayProcess(SEMANTIC.format(**urls, examples=EXAMPLES), "semantic", Path(tmp))
                ),
            }
            for scenario in scenarios(args.quick):
                measured = await measure(scenario, gateways, embedder, args.seed)
                results[scenario.key] = report(scenario, measured)
    verdict = "; ".join(result["verdict"] for result in results.values())
    print(f"verdict: {verdict}")
    output: dict[str, Any] = {
        "benchmark": "semantic_overhead",
        "quick": args.quick,
        "seed": args.seed,
        "primary": PRIMARY,
        "embedder": EMBEDDER,
        "examples": EXAMPLES,
        "wall_s": round(time.perf_counter() - started, 1),
        "scenarios": results,
        "verdict": verdict,
    }
    path = loadkit.write_results(args.out, "semantic_overhead", output)
    print(f"results: {path}")
    return 0 if all(_sound(result) for result in results.values()) else 1


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        raise SystemExit(runner.run(main()))
