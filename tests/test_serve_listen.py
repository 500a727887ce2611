"""``llm-gateway serve`` as a user runs it: its listening flags, and a port in use said in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "routing_policies" / "local.yaml"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_port_in_use_is_one_clear_line(taken_port: int) -> None:
    result = run_cli("serve", "--policy", str(LOCAL), "--port", str(taken_port))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"llm-gateway: cannot listen on 127.0.0.1:{taken_port}: address already in use"
    ]


def test_an_admin_port_in_use_is_one_clear_line(taken_port: int) -> None:
    result = run_cli("serve", "--policy", str(LOCAL), "--port", str(free_port()), "--admin-port", str(taken_port))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"llm-gateway: cannot listen on 127.0.0.1:{taken_port}: address already in use"
    ]


def test_the_same_port_for_api_and_admin_is_one_clear_line() -> None:
    port = free_port()
    result = run_cli("serve", "--policy", str(LOCAL), "--port", str(port), "--admin-port", str(port))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"llm-gateway: cannot listen on 127.0.0.1:{port}: address already in use"]


def test_help_points_at_the_architecture_doc_and_lists_the_connection_flags() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    assert "docs/architecture.md" in top.stdout
    assert "DESIGN" not in top.stdout
    serve = run_cli("serve", "--help")
    flat = " ".join(serve.stdout.split())
    assert "--max-connections N open client connections per listener (default 4096)" in flat
    assert "--header-timeout-s S" in flat and "(default 10.0)" in flat
    assert "--keepalive-s S" in flat and "(default 5.0)" in flat


@pytest.mark.parametrize("flag", ["--max-connections", "--header-timeout-s", "--keepalive-s"])
def test_connection_flags_must_be_positive(flag: str) -> None:
    result = run_cli("serve", "--policy", str(LOCAL), flag, "0")
    assert result.returncode == 2
    assert f"argument {flag}: must be > 0, got 0" in result.stderr


def test_serve_closes_a_silent_connection_after_its_keepalive_flag() -> None:
    port = free_port()
    command = [sys.executable, "-m", "gateway", "serve", "--policy", str(LOCAL), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--keepalive-s", "0.5"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            start = time.monotonic()
            assert sock.recv(1) == b""  # closed by the gateway, well before the 5 s socket timeout
            assert time.monotonic() - start < 2.5
    finally:
        process.terminate()
        process.wait(10)
