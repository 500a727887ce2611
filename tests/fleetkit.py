"""Real processes for fleet-state tests: a ``redis-server`` on a free port, one simulated vLLM server and several
``llm-gateway serve`` instances sharing a policy and ``--state redis://…``, as a Service would run them."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.harness import free_port, require_tool, wait_ready

TOKEN = "fleet-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


class RedisServer:
    """``redis-server`` without persistence, so a restart comes back empty (the worst case for the fleet)."""

    def __init__(self) -> None:
        self.binary = require_tool("redis-server", "install Debian's redis-server (make test does when CI is set)")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--enable-debug-command", "yes"]  # DEBUG SLEEP stalls it on purpose
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


class Process:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._file = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            stdout=self._file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Fleet:
    """A simulator serving ``models`` and ``instances`` gateways on one policy (``${sim}`` is the simulator's
    URL in it) and one ``--state`` URL."""

    def __init__(self, policy: str, models: list[str], state_url: str, instances: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gw-fleet-"))
        self.sim_url = f"http://127.0.0.1:{free_port()}"
        self.sim2_url = f"http://127.0.0.1:{free_port()}"  # a second replica, for policies that name ${sim2}
        model_args = [a for m in models for a in ("--model", m)]
        self.sim = Process(["sim", "--port", self.sim_url.rsplit(":", 1)[1], *model_args], self.dir / "sim.log")
        self.sim2 = Process(["sim", "--port", self.sim2_url.rsplit(":", 1)[1], *model_args], self.dir / "sim2.log")
        self.policy = self.dir / "policy.yaml"
        self.policy.write_text(
            policy.replace("${sim2}", self.sim2_url).replace("${sim}", self.sim_url), encoding="utf-8"
        )
        self.state_url = state_url
        self.gateways: list[Process] = []
        self.urls = [f"http://127.0.0.1:{free_port()}" for _ in range(instances)]
        self._start_gateways()

    def _start_gateways(self) -> None:
        self.gateways = []
        for i, url in enumerate(self.urls):
            port = url.rsplit(":", 1)[1]
            args = ["serve", "--policy", str(self.policy), "--port", port, "--state", self.state_url, "--no-watch"]
            env = {"GATEWAY_ADMIN_TOKEN": TOKEN, "GATEWAY_INSTANCE_ID": f"gw-{i}"}
            log = self.dir / f"gateway-{i}-{len(list(self.dir.glob(f'gateway-{i}-*.log')))}.log"
            self.gateways.append(Process(args, log, env))

    def restart_gateways(self) -> None:
        """Stop every gateway instance, then start them again on the same ports (the simulator keeps running)."""
        for process in self.gateways:
            process.stop()
        self._start_gateways()
        for url in self.urls:
            wait_ready(url)

    def __enter__(self) -> Fleet:
        try:
            for url in self.urls:
                wait_ready(url)
        except AssertionError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for process in [*self.gateways, self.sim, self.sim2]:
            process.stop()

    def configure(self, body: dict[str, Any]) -> None:
        httpx.post(f"{self.sim_url}/sim/config", json=body, timeout=5).raise_for_status()

    def state(self, i: int) -> dict[str, Any]:
        response = httpx.get(f"{self.urls[i]}/admin/state", headers=AUTH, timeout=5)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def gate(self, i: int, model: str, cohort: str) -> dict[str, Any]:
        gates = self.state(i)["evals"]["gates"]
        return next(g for g in gates if g["model"] == model and g["cohort"] == cohort)

    def metric(self, i: int, line_prefix: str) -> float | None:
        for line in httpx.get(f"{self.urls[i]}/metrics", timeout=5).text.splitlines():
            if line.startswith(line_prefix):
                return float(line.rsplit(" ", 1)[1])
        return None


def wait_until(condition: Any, timeout: float, step: float = 0.05) -> float | None:
    """Seconds it took for ``condition()`` to hold, or None if it did not within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(step)
    return time.monotonic() - start if condition() else None
