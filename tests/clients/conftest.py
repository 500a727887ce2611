"""The client compatibility suite: real client libraries, as a new user writes them, against ``make run``'s gateway.

These tests run only under ``make test-clients`` (tests/clients/run.sh), which installs the pinned clients into
environments of their own (.venv-clients/openai3 and .venv-clients/openai2, from tests/clients/requirements-*.txt:
current releases of these clients cannot share one openai SDK) and sets ``LLM_GATEWAY_CLIENTS=1``; plain
``make test`` does not collect them, so the gateway's environment never carries the client libraries. The clients
talk HTTP only: the gateway is ``llm-gateway serve --policy routing_policies/local.yaml`` from the gateway's own
environment (``LLM_GATEWAY_BIN``, default .venv/bin/llm-gateway), started once per run on a free loopback port, or
one already running at ``LLM_GATEWAY_URL`` (say ``make run`` in another terminal).

Every client is configured the way its documentation tells a user to: ``OPENAI_BASE_URL`` and a dummy
``OPENAI_API_KEY`` in the environment (the local policy has no keys), or ``base_url``/``api_key`` arguments where
the library takes no environment.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients.common import API_KEY

if os.environ.get("LLM_GATEWAY_CLIENTS") != "1":
    collect_ignore_glob = ["test_*.py"]  # `make test` stays light; `make test-clients` sets it
else:
    # No network here: LiteLLM would fetch its model price list at import.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parents[2]
POLICY = "routing_policies/local.yaml"
START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"the gateway at {url} did not become ready within {START_TIMEOUT_S:g}s\n{tail}")


@pytest.fixture(scope="session")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway's base URL (no ``/v1``); OPENAI_BASE_URL and OPENAI_API_KEY point every client at it."""
    external = os.environ.get("LLM_GATEWAY_URL")
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    if external:
        url = external.rstrip("/")
        _wait_ready(url, None, None)
    else:
        binary = os.environ.get("LLM_GATEWAY_BIN", str(ROOT / ".venv" / "bin" / "llm-gateway"))
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp_path_factory.mktemp("gateway") / "gateway.log"
        with log.open("wb") as out:
            command = [binary, "serve", "--policy", POLICY, "--host", "127.0.0.1", "--port", str(port)]
            process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _wait_ready(url, process, log)
    saved = {name: os.environ.get(name) for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    os.environ["OPENAI_BASE_URL"] = f"{url}/v1"
    os.environ["OPENAI_API_KEY"] = API_KEY
    try:
        yield url
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@pytest.fixture(scope="session")
def base_url(gateway_url: str) -> str:
    """What the OpenAI-compatible clients take as ``base_url``."""
    return f"{gateway_url}/v1"
