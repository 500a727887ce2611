"""Overhead benchmark: the gateway against the direct path, nginx, LiteLLM, vllm-router and a bare pass-through.

Every path is pointed at the same upstream and driven by the same load, in the same run:

* **direct**: client → upstream, the floor; **gateway**: client → gateway (full policy: cohorts, routes with
  fallback, evaluators, eval gates, metrics; no OTLP endpoint, so spans are no-ops) → upstream; and, when
  installed, **nginx** as a plain reverse proxy, **litellm** (its proxy, one worker), **vllm-router** (vLLM's
  Rust router) and **aiohttp-pass** (``peers/passthrough.py``, a bare aiohttp pass-through: the floor of a Python
  proxy). Configs: ``loadtests/peers/``. A peer that is not installed is skipped with a line saying why.
* **gateway-redis**: the same gateway with ``--state redis://127.0.0.1:PORT/0?prefix=bench``, against a
  ``redis-server`` (no persistence) that the run starts on a free loopback port and stops at the end
  (``peers/state_store.py``); it runs like a peer (when ``redis-server`` is installed, and ``--peers`` may name it)
  and is checked against the gateway with ``memory://`` in the same run.
* **Pinning**: each proxy runs on one core (``taskset``); this script, ``wrk``, the upstream and Redis on the other.
* **Upstream**: nginx answering with vLLM answers recorded from the simulator at the start of the run
  (``peers/nginx-upstream.conf``): at once, after 50 ms, or streamed (first token after 50 ms, then 10 ms a token;
  for the scale test 100 ms a token). The simulator serves ~11,000 req/s on a core, slower than nginx as a proxy
  and about as fast as vllm-router, so as the floor it would cap the peers (the run measures it to show this).
  Without nginx's echo module, and in ``--quick``, the simulator is the upstream (switched live by
  ``POST /sim/config``).
* **Scenarios**: non-streaming at concurrency 1, 16 and 64 with the upstream answering at once and after 50 ms
  (``wrk``, one thread, a Lua script POSTing two chat bodies in turn); streaming at 16 (an asyncio client that
  times the first chunk and the spread of the chunks); scale: 2,000 slow streams opened over 4 s and held
  (direct, then the gateway: RSS sampled every 100 ms).
* **Blocks**: in each scenario every path runs ``--rounds`` blocks of ``--seconds``, in rotated order, so the
  drift of a noisy machine hits every path alike. p50 and p99 are the medians of the blocks' own; req/s is over
  all blocks. *Added* latency is a path's p50 (p99) minus the direct path's in the same scenario. CPU ms per
  request is the proxy's process-tree CPU time during its blocks over its requests; peak RSS is its VmHWM.
* **Noise**: the machine is shared, and other jobs are not pinned away from its cores. A block during which
  processes outside the benchmark used more than ``NOISY_CORES`` of CPU is measured again (``--retries``, within
  ``--retry-budget-s`` for the run), the quietest attempt is kept, and blocks that stay noisy are listed.
* **Revisions**: ``--before REF`` adds the path **gateway-before**, the gateway as of git ``REF`` (its tree
  extracted into the run's temporary directory and run from there with this venv's Python, the same policy and
  pinning), so a change is measured before and after in one run; ``--after REF`` runs **gateway** at ``REF`` too
  instead of this checkout (the working tree, which may be changing while the run goes).
* **Profile**: ``py-spy`` samples the gateway during one extra block at concurrency 64 (upstream at once); the
  top frames go into the JSON and the whole profile into ``overhead_profile.json`` (open it in speedscope.app);
  likewise during a streaming block at concurrency 16 (``overhead_profile_stream.json``).

Run: ``make bench`` (installs wrk, nginx and the peers into ``.bench/`` when missing), or
``.venv/bin/python loadtests/overhead.py [--quick] [--out DIR] [--no-peers | --peers NAME,...] [--before REF]``
(``--peers gateway-redis``: the gateway with ``memory://`` and with Redis only).
Results: ``overhead.json`` and ``overhead.png`` in ``loadtests/results/``. Targets (from the issues) are checked
and printed, for each gateway path; missing one does not fail the run, it is a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import loadkit
import uvloop
from peers import load, processes, proxies, report, state_store
from peers.processes import API_KEY, MODEL, Process
from peers.report import GATEWAYS, NOISY_CORES, PATHS
from peers.upstream import MODES, NginxUpstream, SimUpstream

RESULTS = Path(__file__).resolve().parent / "results"
SYSTEM = "You are the support assistant of an online shop. Answer briefly and politely; escalate when unsure."
BODIES: list[dict[str, Any]] = [
    {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "I was charged twice for order 8812, please refund the second charge."},
        ],
        "max_tokens": 64,
        "temperature": 0.2,
    },
    {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Do you ship to Norway, and how long does delivery usually take?"},
        ],
        "max_tokens": 64,
        "temperature": 0.2,
    },
]
"""One request of the ``billing_refund`` cohort (a regex rule), one of the default cohort (every rule tried)."""
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
PEER_NAMES = (*proxies.PEERS, state_store.NAME)
"""What ``--peers`` may name: the peers, and the gateway with its fleet state in Redis."""
LIVE = {"ready", "measured"}
SCALE_STREAMS = 2000
PHASES = ("fast", "slow", "stream", "scale")
"""The upstream's modes, in the order a run measures them (``slow``: answers after 50 ms)."""
T = TypeVar("T")


@dataclass(frozen=True)
class Scenario:
    mode: str
    concurrency: int
    stream: bool = False

    @property
    def key(self) -> str:
        return f"{self.mode}-c{self.concurrency}"

    @property
    def label(self) -> str:
        what = {"fast": "at once", "slow": "after 50 ms", "stream": "stream TTFT"}[self.mode]
        return f"{what}, c{self.concurrency}"


SCENARIOS = [Scenario(mode, c) for mode in ("fast", "slow") for c in (1, 16, 64)] + [Scenario("stream", 16, True)]
QUICK_SCENARIOS = {"fast-c16", "slow-c16", "stream-c16"}
PROFILED = {"fast": Scenario("fast", 64), "stream": Scenario("stream", 16, True)}
"""The blocks the gateway is profiled in: where its CPU goes at capacity, and in a stream's path."""


@dataclass
class Target:
    """A path under test: the URL clients send to, the upstream behind it, the proxy process (``None``: direct)."""

    name: str
    url: str
    upstream: str
    process: Process | None = None


class Bench:
    """One run: the upstream, the proxies of the current phase, and every block measured so far."""

    def __init__(self, args: argparse.Namespace, run: Path, cpus: tuple[int | None, int | None]) -> None:
        self.args = args
        self.run = run
        self.proxy_cpu, self.load_cpu = cpus
        self.upstream = self._choose_upstream()
        self.peers: dict[str, dict[str, Any]] = {}
        self.blocks: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.rss: dict[str, dict[str, float]] = {}
        self.running: dict[str, Target] = {}
        """The proxies started, by name."""
        self.script = load.wrk_script(run / "post.lua", BODIES, HEADERS)
        self.retry_s = 0.0
        """Seconds spent measuring noisy blocks again so far."""
        self.sources: dict[str, Path] = {}
        """The trees of the gateways run at a git ref (``--before``, ``--after``), by path name."""
        self.gateways: dict[str, str] = {"gateway": f"this checkout, {loadkit.revision()}"}
        """What each gateway path runs: this checkout, or ``REF (commit)``."""
        self.redis: Process | None = None
        """gateway-redis's store, while it runs."""
        self.fleet: dict[str, dict[str, Any]] = {}
        """What gateway-redis made of Redis at the end of each phase (``state_store.seen``)."""

    # --- setup --------------------------------------------------------------------------------------------------

    def _choose_upstream(self) -> NginxUpstream | SimUpstream:
        choice = self.args.upstream or ("sim" if self.args.quick else "auto")
        why_not = NginxUpstream.available()
        if choice == "nginx" and why_not:
            raise SystemExit(f"--upstream nginx: {why_not}")
        if choice == "sim" or why_not:
            if why_not and choice == "auto":
                print(f"upstream: the simulator ({why_not}); it caps the fastest peers", flush=True)
            return SimUpstream(self.run, self.load_cpu)
        return NginxUpstream(self.run, self.load_cpu)

    def check_out(self) -> None:
        """Extract the tree of each gateway asked for at a git ref."""
        for name, ref in (("gateway", self.args.after), ("gateway-before", self.args.before)):
            if ref:
                try:
                    self.sources[name], commit = proxies.checkout(ref, self.run / f"tree-{name}")
                except ValueError as exc:
                    raise SystemExit(f"{name}: {exc}") from None
                self.gateways[name] = f"{ref} ({commit})" if not commit.startswith(ref) else commit
                print(f"{name}: {self.gateways[name]}", flush=True)

    def check_peers(self) -> None:
        """Which peers run: every one installed, those ``--peers`` names, none with ``--no-peers``, and in ``--quick``
        only those ``--peers`` names."""
        named = self.args.peers
        for name in PEER_NAMES:
            why = (
                "--no-peers"
                if self.args.no_peers
                else "not in --peers"
                if named is not None and name not in named
                else "--quick"
                if self.args.quick and named is None
                else ""
            )
            if why:
                self.peers[name] = {"status": "skipped", "why": why}
                continue
            version, why = state_store.status() if name == state_store.NAME else proxies.peer_status(name)
            self.peers[name] = {"status": "ready", "version": version} if version else {"status": "skipped", "why": why}
        for name, peer in self.peers.items():
            if peer["status"] == "skipped":
                print(f"peer {name}: skipped: {peer['why']}", flush=True)

    def start_state_store(self) -> None:
        """gateway-redis's Redis, on the load core; gateway-redis is skipped if it does not start."""
        if self.peers.get(state_store.NAME, {}).get("status") not in LIVE:
            return
        redis = state_store.server(self.run, self.load_cpu)
        try:
            redis.start()
        except processes.StartError as exc:
            self.peers[state_store.NAME] = {"status": "skipped", "why": f"redis-server did not start: {exc}"}
            print(f"peer {state_store.NAME}: skipped, redis-server did not start:\n{exc}", flush=True)
            return
        self.redis = redis
        self.gateways[state_store.NAME] = f"{self.gateways['gateway']}, --state {state_store.state_url(redis)}"
        print(f"{state_store.NAME}: {self.gateways[state_store.NAME]}", flush=True)

    def stop_state_store(self) -> None:
        redis, self.redis = self.redis, None
        if redis is not None:
            redis.stop()

    def _ours(self) -> list[Process]:
        """The benchmark's own servers besides the proxy measured: their CPU is not noise."""
        return [self.upstream.process, *([self.redis] if self.redis is not None else [])]

    def start_targets(self, url: str, names: Sequence[str]) -> list[Target]:
        """Direct and the proxies ``names`` against upstream ``url``; proxies already running against it are kept,
        the others (and those not in ``names``) are stopped. A peer that does not start is skipped, the gateway
        not starting ends the run."""
        for name in list(self.running):
            if name not in names or self.running[name].upstream != url:
                self._stop(name)
        launched = []
        for name in names:
            if name in self.running:
                continue
            run = self.run / f"{name}-{url.rsplit(':', 1)[1]}"
            run.mkdir(exist_ok=True)
            process = self._factory(name)(url, run, self.proxy_cpu)
            process.launch()
            launched.append(process)
        for process in launched:
            try:
                process.wait_ready()
            except processes.StartError as exc:
                if process.name in GATEWAYS and process.name not in self.peers:
                    raise
                self.peers[process.name] = {"status": "skipped", "why": f"did not start: {exc}"}
                self.gateways.pop(process.name, None)
                print(f"peer {process.name}: skipped, it did not start:\n{exc}", flush=True)
                continue
            self.running[process.name] = Target(process.name, process.url, url, process)
            if process.name in self.peers:
                self.peers[process.name]["status"] = "measured"
            print(f"  {process.name} ready in {process.started_s} s", flush=True)
        return [Target("direct", url, url), *(self.running[n] for n in PATHS if n in self.running)]

    def _factory(self, name: str) -> Callable[[str, Path, int | None], Process]:
        """How path ``name`` is started; gateway-redis runs the tree of ``gateway``, so only the state differs."""
        if name == state_store.NAME:
            assert self.redis is not None, "gateway-redis runs only once its Redis is up"
            state = state_store.state_url(self.redis)
            return functools.partial(proxies.gateway, name=name, source=self.sources.get("gateway"), state=state)
        if name in GATEWAYS:
            return functools.partial(proxies.gateway, name=name, source=self.sources.get(name))
        return proxies.PEERS[name]

    def _stop(self, name: str) -> None:
        target = self.running.pop(name)
        if target.process is not None:
            target.process.stop()

    def stop_all(self) -> None:
        for name in list(self.running):
            self._stop(name)

    # --- measuring ----------------------------------------------------------------------------------------------

    def phase(self, mode: str) -> None:
        scenarios = [s for s in SCENARIOS if s.mode == mode and (not self.args.quick or s.key in QUICK_SCENARIOS)]
        if not scenarios:
            return
        url = self.upstream.url(mode)
        print(f"\nphase {mode}: upstream {url}", flush=True)
        names = [n for n in (*self.gateways, *self.peers) if self.peers.get(n, {"status": "ready"})["status"] in LIVE]
        paths = self.start_targets(url, list(dict.fromkeys(names)))
        if not self.args.quick:
            for path in paths:
                self._warm_up(path, scenarios[0])
        for scenario in scenarios:
            started = time.monotonic()
            for r in range(self.args.rounds):
                for path in paths[r % len(paths) :] + paths[: r % len(paths)]:
                    block = self._quiet_block(path, scenario)
                    self.blocks.setdefault(scenario.key, {}).setdefault(path.name, []).append(block)
            print(f"  {scenario.label}: {time.monotonic() - started:.0f} s", flush=True)
        self.rss[mode] = {p.name: round(p.process.peak_rss_mb(), 1) for p in paths if p.process is not None}
        fleet = self.running.get(state_store.NAME)
        if fleet is not None and fleet.process is not None and self.redis is not None:
            self.fleet[mode] = seen = {"pid": fleet.process.pid, **state_store.seen(fleet.url, self.redis)}
            if seen["backend_up"] != 1 or seen["failed_syncs"]:
                print(f"  {state_store.NAME}: not in sync with Redis all along: {seen}", flush=True)

    def _quiet_block(self, path: Target, scenario: Scenario) -> dict[str, Any]:
        """A block, measured again (up to ``--retries`` times, within ``--retry-budget-s`` for the run) while other
        processes used more than ``NOISY_CORES`` of the machine during it; the quietest attempt is kept."""
        block = self._block(path, scenario)
        self._settle(path)
        tries = 1
        while block["foreign_cores"] > NOISY_CORES and tries <= self.args.retries and self._retry_left() > 0:
            started = time.monotonic()
            again = self._block(path, scenario)
            self._settle(path)
            self.retry_s += time.monotonic() - started
            tries += 1
            block = min(block, again, key=lambda b: b["foreign_cores"])
        return {**block, "tries": tries}

    @staticmethod
    def _settle(path: Target, max_s: float = 10.0) -> None:
        """Wait until the proxy is idle again: wrk stops sending at the end of a block, but a slow proxy (LiteLLM at
        concurrency 64) still works through the requests it accepted, on the core the next path is measured on."""
        if path.process is None:
            return
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            before = path.process.cpu_s()
            time.sleep(0.2)
            if path.process.cpu_s() - before < 0.02:
                return

    def _retry_left(self) -> float:
        return float(self.args.retry_budget_s) - self.retry_s

    def _warm_up(self, path: Target, scenario: Scenario) -> None:
        if scenario.stream:
            _run(self._streams(path, scenario, 1.0, processes.CpuMeter(None)))
        else:
            load.run_wrk(path.url, self.script, 16, 1)

    def _block(self, path: Target, scenario: Scenario) -> dict[str, Any]:
        meter = processes.CpuMeter(path.process, self._ours())
        if scenario.stream:
            return _run(self._streams(path, scenario, self.args.seconds, meter))
        meter.begin()
        block = load.run_wrk(path.url, self.script, scenario.concurrency, self.args.seconds)
        return {**asdict(block), **meter.end()}

    async def _streams(
        self, path: Target, scenario: Scenario, seconds: float, meter: processes.CpuMeter
    ) -> dict[str, Any]:
        bodies = [json.dumps({**b, "stream": True}).encode() for b in BODIES]
        async with load.session(scenario.concurrency) as client:
            # Connections are opened (and the proxy's pools warmed) before the timed part.
            await load.stream_loop(client, path.url, bodies, HEADERS, scenario.concurrency, 0.3)
            meter.begin()
            streams, wall = await load.stream_loop(client, path.url, bodies, HEADERS, scenario.concurrency, seconds)
            cpu = meter.end()
        good = [s for s in streams if s.ok]

        def ms(values: list[float], q: float) -> float:
            return round(loadkit.percentile([v * 1000 for v in values], q), 3)

        return {
            "requests": len(streams),
            "duration_s": round(wall, 3),
            "p50_ms": ms([s.ttft_s for s in good], 50),
            "p99_ms": ms([s.ttft_s for s in good], 99),
            "total_p50_ms": ms([s.total_s for s in good], 50),
            "spread_p50_ms": ms([s.spread_s for s in good], 50),
            "reads_p50": loadkit.percentile([float(s.reads) for s in good], 50),
            "errors": {"stream": len(streams) - len(good)} if len(good) < len(streams) else {},
            "first_error": next((s.error for s in streams if not s.ok), ""),
            **cpu,
        }

    def floor_check(self) -> dict[str, Any]:
        """The simulator's own capacity (direct, c64, at once), to show why it is not the floor."""
        if self.upstream.kind != "nginx":
            return {}
        sim = SimUpstream(self.run, self.load_cpu)
        try:
            sim.start()
            load.run_wrk(sim.process.url, self.script, 16, 1)
            block = load.run_wrk(sim.process.url, self.script, 64, self.args.seconds)
        finally:
            sim.stop()
        return {"simulator_direct_c64_req_per_s": round(block.requests / block.duration_s, 1)}

    def profile(self, scenario: Scenario) -> dict[str, Any]:
        """py-spy on the gateway during one extra block of ``scenario``: the top frames, and the whole profile in
        ``overhead_profile[_MODE].json`` (speedscope's format)."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        gateway = self.running.get("gateway")
        if gateway is None or gateway.process is None:
            return {"error": "the gateway is not running"}
        if not Path(spy).exists():
            return {"error": "py-spy is not installed (pip install py-spy)"}
        seconds = max(3, self.args.seconds * 2)
        out = self.run / f"profile-{scenario.key}.json"
        argv = [spy, "record", "--pid", str(gateway.process.pid), "--duration", str(seconds), "--rate", "1000"]
        argv += ["--nonblocking", "--format", "speedscope", "--output", str(out)]
        spying = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        if scenario.stream:
            _run(self._streams(gateway, scenario, seconds + 1, processes.CpuMeter(None)))
        else:
            load.run_wrk(gateway.url, self.script, scenario.concurrency, seconds + 1)
        output, _ = spying.communicate(timeout=60)
        if spying.returncode != 0 or not out.exists():
            return {"error": f"py-spy failed ({spying.returncode}): {output[-300:]}"}
        self.args.out.mkdir(parents=True, exist_ok=True)
        name = "overhead_profile.json" if scenario.mode == "fast" else f"overhead_profile_{scenario.mode}.json"
        shutil.copy(out, self.args.out / name)
        return {"file": name, "seconds": seconds, **report.top_frames(json.loads(out.read_text()))}

    def scale(self) -> dict[str, Any]:
        """``SCALE_STREAMS`` slow streams held at once, direct (the client's own limit) and through the gateway."""
        count = 50 if self.args.quick else SCALE_STREAMS
        mode = "stream" if self.args.quick else "scale"  # the quick run cannot wait 5 s per stream
        url = self.upstream.url(mode)
        settings = MODES[mode]
        paced = float(settings["ttft_s"]) + float(settings["per_token_s"]) * (int(settings["output_tokens"]) - 1)
        print(f"\nscale: {count} streams, upstream {url}", flush=True)
        targets = self.start_targets(url, ["gateway"])
        result: dict[str, Any] = {"streams": count, "token_interval_s": settings["per_token_s"], "paced_s": paced}
        for target in targets:
            result[target.name] = self._hold(target, count)
            print(f"  {target.name}: {result[target.name]['wall_s']} s", flush=True)
        return result

    def _hold(self, target: Target, count: int) -> dict[str, Any]:
        process = target.process
        rss_start = process.rss_mb() if process else 0.0
        samples: list[float] = []
        body = json.dumps({**BODIES[1], "stream": True}).encode()
        meter = processes.CpuMeter(process, self._ours())

        def tick() -> None:
            if process is not None:
                samples.append(process.rss_mb())

        meter.begin()
        hold = _run(load.hold_streams(target.url, body, HEADERS, count, 0.2 if self.args.quick else 4.0, tick))
        cpu = meter.end()
        good = [s for s in hold.streams if s.ok]
        errors = [s.error for s in hold.streams if not s.ok]
        return {
            "completed": len(good),
            "errors": len(errors),
            "first_errors": sorted(set(errors))[:5],
            "max_open": hold.max_open,
            "stream_p50_s": round(loadkit.percentile([s.total_s for s in good], 50), 3),
            "stream_p99_s": round(loadkit.percentile([s.total_s for s in good], 99), 3),
            "ttft_p99_ms": round(loadkit.percentile([s.ttft_s * 1000 for s in good], 99), 1),
            "rss_start_mb": round(rss_start, 1) if process else None,
            "rss_peak_mb": round(max(samples, default=rss_start), 1) if process else None,
            "vmhwm_mb": round(process.peak_rss_mb(), 1) if process else None,
            "cpu_share": round(cpu["cpu_s"] / hold.wall_s, 3),
            "foreign_cores": cpu["foreign_cores"],
            "wall_s": round(hold.wall_s, 2),
            "proxy_log_tail": process.log_tail(8) if process and errors else "",
        }


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


# --- results -----------------------------------------------------------------------------------------------------


def results_table(bench: Bench) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for scenario in SCENARIOS:
        per_path = bench.blocks.get(scenario.key)
        if not per_path:
            continue
        paths = {name: report.summarize(blocks) for name, blocks in per_path.items()}
        direct = paths["direct"]
        for name, summary in paths.items():
            summary["peak_rss_mb"] = bench.rss.get(scenario.mode, {}).get(name)
            summary["blocks"] = per_path[name]
            if name != "direct":
                summary["added_p50_ms"] = round(summary["p50_ms"] - direct["p50_ms"], 3)
                summary["added_p99_ms"] = round(summary["p99_ms"] - direct["p99_ms"], 3)
        results[scenario.key] = {"label": scenario.label, **asdict(scenario), "paths": paths}
    return results


# --- main ---------------------------------------------------------------------------------------------------------


def pin() -> tuple[int | None, int | None]:
    """(proxy core, load core): this process, and so wrk and the upstream, move to the second core."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("one core only: nothing is pinned, the proxy and the load share it", flush=True)
        return None, None
    os.sched_setaffinity(0, {cpus[1]})
    return cpus[0], cpus[1]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds, no peers unless --peers names them: checks the script works",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the results (default: %(default)s)")
    parser.add_argument("--seconds", type=int, default=2, help="seconds per block (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="blocks per path and scenario (default: %(default)s)")
    parser.add_argument("--no-peers", action="store_true", help="only the direct path and the gateway")
    parser.add_argument(
        "--peers",
        type=lambda names: [n for n in names.split(",") if n],
        help=f"the peers to measure, comma-separated (default: every one installed: {','.join(PEER_NAMES)})",
    )
    parser.add_argument("--before", metavar="REF", help="also measure the gateway as of git REF (gateway-before)")
    parser.add_argument("--after", metavar="REF", help="measure the gateway as of git REF, not this checkout")
    parser.add_argument("--retries", type=int, default=2, help="times a noisy block is measured again (default: 2)")
    parser.add_argument(
        "--retry-budget-s",
        type=float,
        default=60,
        help="seconds the whole run may spend measuring noisy blocks again (default: %(default)s)",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of the gateway")
    parser.add_argument("--upstream", choices=["nginx", "sim"], help="default: nginx if its echo module is here")
    parser.add_argument("--markdown", type=Path, metavar="JSON", help="print a results file's tables as Markdown")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="which upstream modes to run, comma-separated (default: %(default)s; targets not run are not measured)",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.peers or ()) - set(PEER_NAMES))
    if unknown:
        parser.error(f"--peers: unknown {', '.join(unknown)} (known: {', '.join(PEER_NAMES)})")
    unknown = sorted({p for p in args.phases.split(",") if p} - set(PHASES))
    if unknown:
        parser.error(f"--phases: unknown {', '.join(unknown)} (known: {', '.join(PHASES)})")
    if args.quick:
        args.seconds, args.rounds, args.retries = 1, 1, 0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(report.markdown(json.loads(args.markdown.read_text(encoding="utf-8"))))
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk (make bench-tools)", file=sys.stderr)
        return 2
    started = time.monotonic()
    # A SIGTERM (a timeout, Ctrl-C in make) unwinds like Ctrl-C, so every process started is stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cpus = pin()
    load.raise_fd_limit(2 * SCALE_STREAMS + 1024)
    load_before = os.getloadavg()
    quiet = processes.CpuMeter(None)
    quiet.begin()
    time.sleep(0 if args.quick else 1)
    others = quiet.end()["foreign_cores"]
    if others > NOISY_CORES:
        print(
            f"the machine is busy: other processes use {others:.2f} cores; noisy blocks are measured again", flush=True
        )
    with tempfile.TemporaryDirectory(prefix="gw-overhead-") as tmp:
        bench = Bench(args, Path(tmp), cpus)
        bench.check_out()
        bench.check_peers()
        bench.upstream.start()
        try:
            bench.start_state_store()
            floor: dict[str, Any] = {}
            profiles: dict[str, Any] = {}
            phases = args.phases.split(",")
            for mode in ("fast", "slow", "stream"):
                if mode not in phases:
                    continue
                bench.phase(mode)
                if not args.quick and not args.no_profile and mode in PROFILED:
                    profiles[PROFILED[mode].key] = bench.profile(PROFILED[mode])
                if mode == "fast" and not args.quick:
                    floor = bench.floor_check()
            scale = bench.scale() if "scale" in phases else {}
        finally:
            bench.stop_all()
            bench.stop_state_store()
            bench.upstream.stop()
    results = results_table(bench)
    ratios = report.peer_ratios(results)
    direct_c64 = report.figure(results, "fast-c64", "direct", "req_per_s")
    data = {
        "quick": args.quick,
        "revision": loadkit.revision(),
        "machine": {
            "cpus": os.cpu_count(),
            "pinning": f"proxy on cpu {cpus[0]}, load + upstream on cpu {cpus[1]}" if cpus[0] is not None else "none",
            "loadavg_before": [round(x, 2) for x in load_before],
            "other_processes_cores_before": others,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {"seconds": args.seconds, "rounds": args.rounds, "bodies": BODIES, "modes": MODES},
        "upstream": {"kind": bench.upstream.kind, "direct_c64_req_per_s": direct_c64, **floor},
        "gateways": bench.gateways,
        "tracing": "no OTLP endpoint: the gateway creates no exporter, spans are no-ops",
        "peers": bench.peers,
        "state_store": {"path": state_store.NAME, "phases": bench.fleet},
        "results": results,
        "ratios": ratios,
        "scale": scale,
        "profiles": profiles,
        "wall_s": 0.0,
    }
    data["targets"] = report.check_targets(results, ratios, scale, SCALE_STREAMS)
    if "gateway-before" in bench.gateways:
        data["ratios_before"] = report.peer_ratios(results, "gateway-before")
        data["targets_before"] = report.check_targets(
            results, data["ratios_before"], scale, SCALE_STREAMS, "gateway-before"
        )
    if bench.fleet:
        # A process that served several phases (the simulator as upstream) was scraped after each: its count grows.
        failed = {seen["pid"]: seen["failed_syncs"] for seen in bench.fleet.values()}
        total = None if None in failed.values() else sum(failed.values())
        data["targets_redis"] = report.check_fleet_targets(results, total)
    data["wall_s"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    why_no_chart = report.chart(data, args.out / "overhead.png")
    if why_no_chart:
        print(f"no chart: {why_no_chart}", flush=True)
    path = args.out / "overhead.json"
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print("\n" + report.text(data))
    print(f"\nwrote {path} and overhead.png in {data['wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
