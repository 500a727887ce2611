"""The load: ``wrk`` for plain requests, an asyncio client for streams. Both are closed loops on loopback only.

``wrk`` (C, one thread) keeps ``concurrency`` connections busy for a fixed time and reports its latency
percentiles through a Lua ``done`` hook as one JSON line. It cycles through the request bodies given, so every
path sees the same requests in the same order. Streams need the time to the first chunk and the spacing of the
chunks, which wrk cannot see, hence the asyncio client; its own cost is the same on every path.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp

WRK_TIMEOUT_S = 30
"""A request slower than this counts as a wrk timeout error (LiteLLM at concurrency 64 takes seconds)."""

_LUA = """
local bodies = { %(bodies)s }
local headers = { %(headers)s }
local requests = {}
local n = 0
init = function(args)
  for i, body in ipairs(bodies) do requests[i] = wrk.format("POST", nil, headers, body) end
end
request = function()
  n = n + 1
  return requests[(n %% #requests) + 1]
end
done = function(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    '\\nWRK_JSON {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d,' ..
    '"mean_us":%%.1f,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def wrk_script(path: Path, bodies: Sequence[dict[str, Any]], headers: dict[str, str]) -> Path:
    """Write the Lua script that POSTs ``bodies`` in turn with ``headers``."""

    def lua_string(text: str) -> str:
        assert "]==]" not in text
        return f"[==[{text}]==]"

    lua = _LUA % {
        "bodies": ", ".join(lua_string(json.dumps(body, separators=(",", ":"))) for body in bodies),
        "headers": ", ".join(f"[ {lua_string(k)} ] = {lua_string(v)}" for k, v in headers.items()),
    }
    path.write_text(lua, encoding="utf-8")
    return path


@dataclass
class WrkBlock:
    """One wrk run: requests done in ``duration_s``, latency percentiles (ms), errors by kind."""

    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    errors: dict[str, int]


def run_wrk(url: str, script: Path, concurrency: int, seconds: float) -> WrkBlock:
    """``wrk`` with one thread and ``concurrency`` connections against ``url`` for ``seconds``."""
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", f"--timeout={WRK_TIMEOUT_S}s"]
    done = subprocess.run(
        [*argv, "-s", str(script), url + "/v1/chat/completions"],
        capture_output=True,
        text=True,
        timeout=seconds + WRK_TIMEOUT_S + 30,
        check=False,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    return WrkBlock(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        mean_ms=data["mean_us"] / 1000,
        errors={k: data[k] for k in ("connect", "read", "write", "status", "timeout") if data[k]},
    )


@dataclass
class Stream:
    """One streamed answer as the client saw it: seconds from sending to the first ``data:`` chunk and to the end,
    the spread between the first and the last chunk, and how many socket reads delivered it."""

    ok: bool
    ttft_s: float = 0.0
    total_s: float = 0.0
    spread_s: float = 0.0
    reads: int = 0
    error: str = ""


async def stream_once(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> Stream:
    started = time.perf_counter()
    first = last = 0.0
    reads = 0
    tail = b""
    try:
        async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as response:
            if response.status != 200:
                return Stream(False, error=f"HTTP {response.status}: {(await response.read())[:200]!r}")
            async for chunk in response.content.iter_any():
                now = time.perf_counter()
                reads += 1
                if not first and b"data:" in chunk:
                    first = now
                last = now
                tail = (tail + chunk)[-64:]
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Stream(False, error=f"{type(exc).__name__}: {exc}")
    if b"[DONE]" not in tail:
        return Stream(False, error="the stream ended without data: [DONE]")
    return Stream(True, first - started, last - started, last - first, reads)


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft open-files limit towards ``needed`` (processes started later inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return int(soft)


def session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300))


async def stream_loop(
    client: aiohttp.ClientSession,
    url: str,
    bodies: Sequence[bytes],
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
) -> tuple[list[Stream], float]:
    """``concurrency`` clients streaming one answer after another for ``seconds``; the streams and the wall time."""
    streams: list[Stream] = []
    deadline = time.perf_counter() + seconds

    async def client_loop(offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            streams.append(await stream_once(client, url, bodies[i % len(bodies)], headers))
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(client_loop(k) for k in range(concurrency)))
    return streams, time.perf_counter() - started


@dataclass
class Hold:
    """The scale test: ``count`` slow streams opened over ``ramp_s`` and held until each one ends."""

    streams: list[Stream] = field(default_factory=list)
    max_open: int = 0
    wall_s: float = 0.0


class _RawStream(asyncio.Protocol):
    """One streamed answer over its own connection, with no HTTP client library: holding thousands of streams,
    the client's per-chunk cost must stay well below the proxy's. The answer ends with ``data: [DONE]`` and the
    chunked encoding's last chunk (not every server closes the connection on ``Connection: close``)."""

    def __init__(self, request: bytes, started: float) -> None:
        self.request = request
        self.started = started
        self.done: asyncio.Future[Stream] = asyncio.get_running_loop().create_future()
        self.first = self.last = 0.0
        self.reads = 0
        self.head = b""
        self.tail = b""
        self.finished = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if len(self.head) < 12:
            self.head += data[:12]
        self.reads += 1
        if not self.first and b"data:" in data:
            self.first = now
        self.last = now
        self.tail = (self.tail + data)[-64:]
        if not self.finished and b"[DONE]" in self.tail:
            self.finished = now
        if self.finished and self.tail.endswith(b"\r\n0\r\n\r\n"):
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if not self.head.startswith(b"HTTP/1.1 200"):
            self.done.set_result(Stream(False, error=f"status line {self.head!r}"))
        elif not self.finished:
            self.done.set_result(Stream(False, error=f"the stream ended without data: [DONE] ({exc})"))
        else:
            first, end = self.first - self.started, self.finished - self.started
            self.done.set_result(Stream(True, first, end, end - first, self.reads))


async def hold_streams(
    url: str, body: bytes, headers: dict[str, str], count: int, ramp_s: float, tick: Callable[[], None]
) -> Hold:
    """Open ``count`` streams evenly over ``ramp_s`` (one connection each), read each to its end; ``tick()`` is
    called every 100 ms meanwhile (to sample the proxy's memory)."""
    host, port = url.removeprefix("http://").split(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n{head}Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    hold = Hold()
    open_now = 0

    async def one(delay: float) -> None:
        nonlocal open_now
        await asyncio.sleep(delay)
        open_now += 1
        hold.max_open = max(hold.max_open, open_now)
        started = time.perf_counter()
        try:
            protocol = _RawStream(request, started)
            await loop.create_connection(lambda: protocol, host, int(port))
            hold.streams.append(await asyncio.wait_for(protocol.done, 300))
        except (OSError, TimeoutError) as exc:
            hold.streams.append(Stream(False, error=f"{type(exc).__name__}: {exc}"))
        finally:
            open_now -= 1

    async def sample() -> None:
        while True:
            tick()
            await asyncio.sleep(0.1)

    started = time.perf_counter()
    sampler = asyncio.create_task(sample())
    try:
        await asyncio.gather(*(one(ramp_s * i / count) for i in range(count)))
    finally:
        sampler.cancel()
    hold.wall_s = time.perf_counter() - started
    return hold
