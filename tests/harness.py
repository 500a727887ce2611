"""Real servers for end-to-end tests: simulated vLLM backends and a gateway on loopback ports.

Everything runs in one background thread with its own event loop, so tests can drive it with the official sync
*and* async ``openai`` clients over real sockets, and steer the simulators through their HTTP control API.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import string
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
import uvloop

from gateway.api.app import create_app
from gateway.api.server import ConnectionLimits, server_config
from gateway.policy import load_policy
from gateway.runtime import Gateway
from gateway.sim import SimProfile, SimServer
from gateway.telemetry.tracing import Tracing

T = TypeVar("T")


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class Stack:
    """``sims`` maps a simulator name to the model names it serves; the policy template names them ``${NAME}``.

    The gateway listens with the server configuration of ``llm-gateway serve``, under ``connection_limits``.
    """

    def __init__(
        self,
        policy_template: str,
        sims: dict[str, list[str]],
        *,
        sim_profile: SimProfile | None = None,
        rng: Callable[[], float] | None = None,
        tracing: Tracing | None = None,
        connection_limits: ConnectionLimits | None = None,
    ) -> None:
        self._tracing = tracing
        self._connection_limits = connection_limits or ConnectionLimits()
        self._template = policy_template
        self._sims_spec = sims
        self._sim_profile = sim_profile
        self._rng = rng
        self.sims: dict[str, SimServer] = {}
        self.gateway: Gateway | None = None
        self.url = ""
        self.policy_path = Path(tempfile.mkdtemp(prefix="gw-test-")) / "policy.yaml"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()

    def __enter__(self) -> Stack:
        self._thread = threading.Thread(target=self._run, name="gateway-stack", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"stack did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        for name, models in self._sims_spec.items():
            server = SimServer(models, self._sim_profile)
            await server.start("127.0.0.1", 0)
            self.sims[name] = server
        urls = {name: server.url for name, server in self.sims.items()}
        self.policy_path.write_text(string.Template(self._template).substitute(urls), encoding="utf-8")
        self.gateway = Gateway(load_policy(self.policy_path), rng=self._rng, tracing=self._tracing)
        sock = _bound_socket()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = server_config(create_app(self.gateway), self._connection_limits, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started and not serving.done():
            await asyncio.sleep(0.01)
        self._ready.set()
        try:
            await serving
        finally:
            for server in self.sims.values():
                await server.stop()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coroutine`` on the stack's event loop (e.g. to stop a simulator as if its process died)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def kill_sim(self, name: str) -> None:
        self.call(self.sims[name].stop())

    def sim_url(self, name: str) -> str:
        return self.sims[name].url

    def configure(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(f"{self.sim_url(name)}/sim/config", json=body, timeout=5)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def stats(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.sim_url(name)}/sim/stats", timeout=5).json()
        return result

    def requests_to(self, name: str, model: str) -> int:
        return int(self.stats(name)["models"][model]["requests"])

    def reset(self) -> None:
        """Heal every simulator and zero its counters (module-scoped stacks are shared between tests)."""
        for name in self.sims:
            self.configure(name, {"set": {}, "reset_stats": True, "reset_profile": True})

    def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.02)
        return condition()


def free_port() -> int:
    """A loopback port nobody listens on right now (for servers started as subprocesses)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    """Poll ``GET {url}/readyz`` until it answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not become ready within {timeout_s:g}s")


def require_tool(name: str, hint: str) -> str:
    """The tool's path; skip without it, except in CI (``CI`` set), where a missing tool is a failure."""
    path = shutil.which(name)
    if path is None:
        message = f"`{name}` not found on PATH: {hint}"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI is set, so this check does not skip")
        pytest.skip(message)
    return path
