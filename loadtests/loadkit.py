"""Shared pieces of the load tests: the gateway as a real process, simulated vLLM servers, a closed-loop driver.

The gateway runs as its own process (``python -m gateway serve``), as in production, so it gets a core of its own
and the load generator's CPU does not slow it through the GIL. The simulators, the load generator and any
"external" traffic share the benchmark's event loop: they mostly sleep, and whatever they cost, they cost both
variants of a comparison alike. Every figure that leaves a script is a ratio against a baseline measured in the
same run, because absolute numbers on a shared 2-core machine say little.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from gateway.sim import SimProfile, SimServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtests" / "results"
HOST = "127.0.0.1"

Send = Callable[[aiohttp.ClientSession, int], Awaitable["Sample"]]
"""One request of a workload: ``send(session, i)`` for request number ``i``, timed by the caller."""


def parse_args(doc: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, to check the script works")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for NAME.json (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the workload and the simulators")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class GatewayProcess:
    """``python -m gateway serve`` on a free loopback port, ready (``/readyz`` 200) on enter, stopped on exit."""

    def __init__(self, policy_yaml: str, name: str, workdir: Path) -> None:
        self.name = name
        self.policy_path = workdir / f"{name}.yaml"
        self.policy_path.write_text(policy_yaml, encoding="utf-8")
        self.log_path = workdir / f"{name}.log"
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> GatewayProcess:
        with self.log_path.open("wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--policy",
                str(self.policy_path),
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            await self._wait_ready(30.0)
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def _wait_ready(self, timeout_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self._proc.returncode is not None:
                    break
                try:
                    async with session.get(self.url + "/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        log = self.log_path.read_text(encoding="utf-8", errors="replace")
        raise RuntimeError(f"gateway {self.name} did not become ready; its log:\n{log}")

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            if proc is not None:
                await proc.wait()
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def metrics(self, session: aiohttp.ClientSession) -> str:
        async with session.get(self.url + "/metrics") as response:
            return await response.text()


async def start_sims(stack: AsyncExitStack, names: dict[str, list[str]], profile: SimProfile) -> dict[str, SimServer]:
    """One in-process simulator per name (serving the listed models), stopped when ``stack`` closes."""
    sims = {}
    for name, models in names.items():
        sims[name] = await stack.enter_async_context(SimServer(models, profile))
    return sims


def new_session(concurrency: int) -> aiohttp.ClientSession:
    """A client session that keeps one connection per concurrent client, so no request waits for a connection."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


@dataclass
class Sample:
    latency_s: float
    ok: bool
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Block:
    """The outcome of one closed-loop run: per-request samples and the wall time it took."""

    samples: list[Sample]
    wall_s: float


def chat_body(model: str, rng: random.Random, max_tokens: int | None = None) -> dict[str, Any]:
    words = ("refund", "invoice", "policy", "shipping", "account", "order", "plan", "upgrade", "question", "help")
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(4, 24)))}],
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


async def post_chat(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Sample:
    """POST one non-streamed chat completion, read the whole answer; the latency is the client's view."""
    started = time.perf_counter()
    try:
        async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as response:
            await response.read()
            ok = response.status == 200
            kept = {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("x-gateway-")}
    except (aiohttp.ClientError, TimeoutError):
        return Sample(time.perf_counter() - started, False)
    return Sample(time.perf_counter() - started, ok, kept)


def chat_sender(
    url: str, bodies: Sequence[dict[str, Any]], headers: Callable[[int], dict[str, str]] | None = None
) -> Send:
    """A :data:`Send` that posts ``bodies[i]`` (cycling) to the gateway at ``url``, with ``headers(i)``."""

    async def send(session: aiohttp.ClientSession, i: int) -> Sample:
        return await post_chat(session, url, bodies[i % len(bodies)], headers(i) if headers else None)

    return send


async def closed_loop(session: aiohttp.ClientSession, send: Send, requests: int, concurrency: int) -> Block:
    """``concurrency`` clients, each sending its next request as soon as its last one answered, ``requests`` in all."""
    samples: list[Sample | None] = [None] * requests
    counter = iter(range(requests))

    async def client() -> None:
        for i in counter:
            samples[i] = await send(session, i)

    # The load generator's own garbage collections would land in the latencies of whichever block they hit.
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    finally:
        gc.enable()
    return Block([s for s in samples if s is not None], wall)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _latencies_ms(samples: list[Sample]) -> list[float]:
    return [s.latency_s * 1000 for s in samples if s.ok]


def summarize(blocks: list[Block]) -> dict[str, float]:
    """Latency (ms) of successful requests, req/s over the blocks' wall time, error count.

    ``p50_ms``/``p99_ms``/``mean_ms`` pool every block. ``p99_block_median_ms`` is the median of the blocks' own
    p99s: one hiccup of the machine (another tenant, a collection) moves the pooled p99 of a few thousand requests
    by tens of percent, but only one block's p99, so this one is the steadier figure to compare.
    """
    samples = [s for b in blocks for s in b.samples]
    good = _latencies_ms(samples)
    wall = sum(b.wall_s for b in blocks)
    block_p99s = [percentile(_latencies_ms(b.samples), 99) for b in blocks]
    return {
        "requests": len(samples),
        "errors": sum(not s.ok for s in samples),
        "p50_ms": round(percentile(good, 50), 2),
        "p99_ms": round(percentile(good, 99), 2),
        "p99_block_median_ms": round(percentile(block_p99s, 50), 2),
        "mean_ms": round(sum(good) / len(good), 2) if good else math.nan,
        "req_per_s": round(len(samples) / wall, 1) if wall > 0 else math.nan,
    }


RATIO_KEYS = ("p50_ms", "p99_ms", "p99_block_median_ms", "mean_ms", "req_per_s")


def ratios(candidate: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    """``candidate / baseline`` for each figure of :func:`summarize` that is a latency or a rate."""
    return {key: round(candidate[key] / baseline[key], 3) for key in RATIO_KEYS}


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric ``name`` in Prometheus text, as (labels, value)."""
    found = []
    for metric, labels, value in _SAMPLE.findall(text):
        if metric == name:
            found.append((dict(_LABEL.findall(labels or "")), float(value)))
    return found


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [headers, *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def revision() -> str:
    """The code measured: ``git describe --always --dirty`` of the checkout, or "unknown"."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def write_results(out_dir: Path, name: str, results: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({**results, "revision": revision()}, indent=2) + "\n", encoding="utf-8")
    return path


def workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="gw-loadtest-")
