"""Hostile clients through a running gateway: silent or slow sockets, floods of them, and bodies nested too deep.

Each answer must come within its deadline and be OpenAI-shaped; a flood of sockets must not keep a real request
from its answer.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api.server import ConnectionLimits
from gateway.api.validation import MAX_JSON_DEPTH
from tests.harness import Stack

POLICY = """
version: 1
public_models: [assistant]
models:
  base: {kind: base, backends: ["${base}"]}
cohorts:
  - {name: everyone, default: true}
routes:
  everyone: {target: base}
limits: {body_timeout_s: BODY_TIMEOUT_S}
"""
SIMS = {"base": ["base"]}
CHAT = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
QUICK = ConnectionLimits(max_connections=64, header_timeout_s=1.0, keepalive_s=1.0)
# Timeouts far longer than any of these tests: what closes sockets in them is the connection cap alone.
CAPPED = ConnectionLimits(max_connections=8, header_timeout_s=60.0, keepalive_s=60.0)


@pytest.fixture(scope="module")
def quick() -> Iterator[Stack]:
    with Stack(POLICY.replace("BODY_TIMEOUT_S", "1"), SIMS, connection_limits=QUICK) as stack:
        yield stack


@pytest.fixture
def capped() -> Iterator[Stack]:
    with Stack(POLICY.replace("BODY_TIMEOUT_S", "60"), SIMS, connection_limits=CAPPED) as stack:
        yield stack


def connect(stack: Stack) -> socket.socket:
    host, port = stack.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def wait_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, float]:
    """What the gateway sends until it closes ``sock``, and after how many seconds it closed; fails past the
    timeout."""
    start = time.monotonic()
    sock.settimeout(timeout_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the gateway kept the connection open for {timeout_s:g}s; received {received[:200]!r}")
    return received, time.monotonic() - start


def drip(sock: socket.socket, data: bytes, every_s: float, give_up_s: float) -> float:
    """Send ``data`` a byte every ``every_s`` until the gateway answers or closes; the seconds that took."""
    start = time.monotonic()
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        readable, _, _ = select.select([sock], [], [], every_s)
        if readable or time.monotonic() - start > give_up_s:
            break
    return time.monotonic() - start


def openai_error(raw: bytes, status: int) -> dict[str, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), raw[:300]
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


def is_closed(sock: socket.socket) -> bool:
    """Whether the gateway has closed ``sock`` (without waiting)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def test_a_silent_connection_is_closed_after_the_keepalive_timeout(quick: Stack) -> None:
    with connect(quick) as sock:
        received, after_s = wait_closed(sock, timeout_s=5)
    assert received == b""
    assert QUICK.keepalive_s * 0.8 <= after_s <= QUICK.keepalive_s + 2


def test_a_kept_alive_connection_is_closed_after_the_keepalive_timeout(quick: Stack) -> None:
    with connect(quick) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
        received, after_s = wait_closed(sock, timeout_s=5)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert after_s <= QUICK.keepalive_s + 2


def test_headers_sent_a_byte_at_a_time_get_408_after_the_header_timeout(quick: Stack) -> None:
    request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-pad: " + b"a" * 200 + b"\r\n\r\n"
    with connect(quick) as sock:
        answered_after_s = drip(sock, request, every_s=0.1, give_up_s=6)
        received, _ = wait_closed(sock, timeout_s=5)
    error = openai_error(received, 408)
    assert error["code"] == "request_timeout"
    assert b"\r\nconnection: close\r\n" in received
    assert QUICK.header_timeout_s * 0.8 <= answered_after_s <= QUICK.header_timeout_s + 2


def test_a_body_sent_too_slowly_gets_408_after_the_body_timeout(quick: Stack) -> None:
    """``limits.body_timeout_s`` (1 s here) is for the whole body: bytes every 0.1 s do not keep it going."""
    body = json.dumps(CHAT).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
    with connect(quick) as sock:
        sock.sendall(head + b"content-length: %d\r\n\r\n" % len(body))
        answered_after_s = drip(sock, body, every_s=0.1, give_up_s=6)
        received, _ = wait_closed(sock, timeout_s=5)
    error = openai_error(received, 408)
    assert error["code"] == "request_timeout"
    assert 0.8 <= answered_after_s <= 3


def test_real_requests_are_answered_through_a_flood_of_idle_and_half_sent_sockets(capped: Stack) -> None:
    flood = [connect(capped) for _ in range(3 * CAPPED.max_connections)]
    try:
        for i, sock in enumerate(flood):
            if i % 2:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")  # and never the rest
        for _ in range(3):
            response = httpx.post(capped.url + "/v1/chat/completions", json=CHAT, timeout=5)
            assert response.status_code == 200, response.text
        time.sleep(0.3)
        open_sockets = [sock for sock in flood if not is_closed(sock)]
        # the cap closed the oldest: at most max_connections of the flood are left, the newest ones
        assert len(open_sockets) <= CAPPED.max_connections
        assert flood[-1] in open_sockets
        assert all(is_closed(sock) for sock in flood[: CAPPED.max_connections])
    finally:
        for sock in flood:
            sock.close()


def test_when_every_connection_is_busy_a_new_request_gets_503(capped: Stack) -> None:
    body = json.dumps(CHAT).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
    head += b"content-length: %d\r\n\r\n" % len(body)
    busy = [connect(capped) for _ in range(CAPPED.max_connections)]
    try:
        for sock in busy:
            sock.sendall(head + body[:5])  # mid-request: the rest of the body is still to come
        time.sleep(0.3)
        refused = httpx.post(capped.url + "/v1/chat/completions", json=CHAT, timeout=5)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "connection_limit"
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["connection"] == "close"
        busy[0].sendall(body[5:])  # one busy request completes, and its connection is kept alive (idle)
        assert wait_readable(busy[0]).startswith(b"HTTP/1.1 200 ")
        response = httpx.post(capped.url + "/v1/chat/completions", json=CHAT, timeout=5)
        assert response.status_code == 200, response.text
    finally:
        for sock in busy:
            sock.close()


def wait_readable(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    return sock.recv(65536)


def nested(shape: list[bool]) -> Any:
    """A value nested ``len(shape)`` levels deep: an object where ``shape`` says True, an array where False."""
    value: Any = 1
    for is_object in reversed(shape):
        value = {"a": value} if is_object else [value]
    return value


def test_a_body_nested_300_levels_deep_is_400(rollout_stack: Stack) -> None:
    body = {**CHAT, "model": "support-assistant", "metadata": {"a": nested([True] * 300)}}
    response = httpx.post(rollout_stack.url + "/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 400, response.text
    assert f"{MAX_JSON_DEPTH} levels" in response.json()["error"]["message"]


def placed(where: str, value: Any) -> tuple[dict[str, Any], int]:
    """A chat body with ``value`` at ``where``, and how many levels of the body are above ``value``."""
    if where == "tools":
        tool = {"type": "function", "function": {"name": "f", "parameters": {"x": value}}}
        return {**CHAT, "model": "support-assistant", "tools": [tool]}, 5
    return {**CHAT, "model": "support-assistant", where: {"a": value}}, 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.integers(1, 300).flatmap(lambda depth: st.lists(st.booleans(), min_size=depth, max_size=depth)),
    where=st.sampled_from(["metadata", "tools", "x_extra"]),
)
def test_any_nesting_is_answered_by_depth_never_500(rollout_stack: Stack, shape: list[bool], where: str) -> None:
    """Bodies up to ``MAX_JSON_DEPTH`` levels deep (the body object is level 1) get an answer; deeper ones a 400."""
    body, above = placed(where, nested(shape))
    response = httpx.post(rollout_stack.url + "/v1/chat/completions", json=body, timeout=10)
    if above + len(shape) > MAX_JSON_DEPTH:
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    else:
        assert response.status_code == 200, response.text
