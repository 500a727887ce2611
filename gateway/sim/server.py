"""Running the simulator: in-process (``SimServer``, for tests and ``sim://`` backends) or standalone (``run_sim``).

Handlers run with ``handler_cancellation`` so that a client going away cancels its handler (the simulator
counts it as ``cancelled``); ``stop()`` cancels the generations still in flight, hung ones included, rather
than waiting for them.
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import suppress
from typing import Any

from aiohttp import web

from gateway.sim.app import SIM_STATE, build_app
from gateway.sim.profile import SimProfile
from gateway.sim.state import SimState

__all__ = ["SimServer", "build_app", "run_sim"]


class SimServer:
    """A simulated vLLM server on a real socket, inside the caller's event loop."""

    def __init__(self, models: list[str], profile: SimProfile | None = None, *, shutdown_s: float = 1.0) -> None:
        self.app = build_app(models, profile)
        self.state: SimState = self.app[SIM_STATE]
        self._shutdown_s = shutdown_s
        self._runner: web.AppRunner | None = None
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL such as ``http://127.0.0.1:8000`` (no ``/v1``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port``; port 0 picks a free one (read it back from ``.port``)."""
        if self._runner is not None:
            raise RuntimeError("SimServer already started")
        runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None, shutdown_timeout=self._shutdown_s)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.host = host
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening and cancel in-flight generations (hung ones included), so stopping is prompt."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for task in list(self.state.inflight):
            if task is not None:
                task.cancel()
        await runner.cleanup()

    def stats(self) -> dict[str, Any]:
        """The same JSON as ``GET /sim/stats``."""
        return self.state.stats.as_json()

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        """The same as ``POST /sim/config``; raises ``SimError`` (a 400) on a bad body."""
        return self.state.configure(body)

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def run_sim(host: str, port: int, models: list[str], profile_path: str | None = None) -> None:
    """Serve until SIGINT/SIGTERM, on uvloop when it is installed; prints one line once listening."""
    profile = SimProfile.from_file(profile_path) if profile_path else SimProfile()
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve_until_signalled(host, port, models, profile))


async def _serve_until_signalled(host: str, port: int, models: list[str], profile: SimProfile) -> None:
    server = SimServer(models, profile)
    await server.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"sim listening on {server.url} models={','.join(server.state.models)}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()
