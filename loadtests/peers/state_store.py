"""The path **gateway-redis**: the gateway with its fleet state in a Redis of the run's own, and what it made of it.

The path runs the same gateway as **gateway** (same tree, policy and pinning) with ``--state
redis://127.0.0.1:PORT/0?prefix=bench``, so the two rows differ only in where fleet state lives. The benchmark
starts ``redis-server`` itself on a free loopback port, with no persistence (``--save '' --appendonly no``), pinned
like the upstream to the load core (a fleet's Redis is a service of its own: its CPU is not the gateway's), and
stops it at the end. The request path never waits for Redis; what the row measures is the gateway's side of the
background sync (every 0.5 s) and of keeping what it sends. Whether the gateway stayed connected is read from its
``/metrics`` at the end of each phase, so a row measured against a Redis the gateway never reached shows up as
failed syncs instead of passing for a fleet.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from peers.processes import HOST, Process, free_port

NAME = "gateway-redis"
PREFIX = "bench"
INSTALL = "apt-get install redis-server; make bench-tools"


def status() -> tuple[str | None, str]:
    """``("redis-server VERSION", "")`` when the path can run here, else ``(None, why not)``."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None, f"redis-server is not installed ({INSTALL})"
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False, timeout=10)
    version = re.search(r"\bv=(\S+)", done.stdout)
    return f"redis-server {version.group(1) if version else 'unknown'}", ""


def server(run: Path, cpu: int | None) -> Process:
    """A ``redis-server`` on a free loopback port (not started): no persistence, nothing written outside ``run``."""
    port = free_port()
    home = run / "redis"
    home.mkdir(exist_ok=True)
    argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", HOST]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(home), "--daemonize", "no"]
    url = f"redis://{HOST}:{port}/0"
    return Process(
        "redis",
        argv,
        ready_url=url,
        url=url,
        log=run / "redis.log",
        cpu=cpu,
        probe=lambda: command(port, "PING") == b"+PONG",
        start_timeout_s=15.0,
    )


def state_url(redis: Process) -> str:
    """The gateway's ``--state`` for ``redis``."""
    return f"{redis.url}?prefix={PREFIX}"


def command(port: int, *args: str) -> bytes:
    """One Redis command over a socket of its own; the first line of the reply, or b"" when Redis cannot answer."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(request.encode())
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return b""
    return reply.split(b"\r\n", 1)[0]


def seen(gateway_url: str, redis: Process) -> dict[str, Any]:
    """What the gateway made of the store: ``backend_up`` (its ``llm_gateway_state_backend_up``), ``failed_syncs``
    (``llm_gateway_state_errors_total{op="sync"}``; ``None``: the metrics did not answer) and the keys in Redis."""
    try:
        with urllib.request.urlopen(gateway_url + "/metrics", timeout=5) as response:
            metrics = response.read().decode()
    except OSError:
        metrics = ""
    up = re.search(r"^llm_gateway_state_backend_up (\S+)$", metrics, re.MULTILINE)
    failed = re.search(r'^llm_gateway_state_errors_total\{op="sync"\} (\S+)$', metrics, re.MULTILINE)
    keys = command(urlsplit(redis.url).port or 0, "DBSIZE")
    return {
        "backend_up": float(up.group(1)) if up else None,
        "failed_syncs": (int(float(failed.group(1))) if failed else 0) if metrics else None,
        "redis_keys": int(keys[1:]) if keys.startswith(b":") else None,
    }
