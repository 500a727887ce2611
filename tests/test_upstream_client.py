"""The upstream HTTP/1.1 client against a scripted raw-socket server: keep-alive, framing, streams, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from gateway.errors import UpstreamConnectError, UpstreamDisconnected, UpstreamTimeout
from gateway.upstream.client import Timeouts, UpstreamClient
from tests.harness import free_port

TIMEOUTS = Timeouts(connect_s=2.0, first_byte_s=2.0)
LIMIT = 1024 * 1024
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Script:
    """A server whose connections run ``handler(reader, writer, connection_number)``; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.disconnects = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.disconnects += 1
            writer.close()


@asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[tuple[str, Script, UpstreamClient]]:
    script = Script(handler)
    port = free_port()
    server = await asyncio.start_server(script.serve, "127.0.0.1", port)
    client = UpstreamClient()
    await client.start()
    try:
        yield f"http://127.0.0.1:{port}", script, client
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def json_answer(body: bytes, *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while True:
        request = await read_request(reader)
        await asyncio.sleep(0.01)
        writer.write(json_answer(request.split(b"\r\n\r\n", 1)[1]))
        await writer.drain()


async def test_keep_alive_reuses_one_connection_and_sends_body_and_headers() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(json_answer(b'{"ok": true}'))
            await writer.drain()

    async with scripted(handler) as (url, script, client):
        for i in range(5):
            body = b'{"i": %d}' % i
            response = await client.post(url + "/v1/chat/completions", body, {"x-request-id": "r"}, TIMEOUTS)
            assert response.status == 200
            assert await response.read(LIMIT) == b'{"ok": true}'
        assert script.connections == 1
    assert seen[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nx-request-id: r\r\n" in seen[0] and b"\r\ncontent-length: 8\r\n" in seen[0].lower()
    assert seen[4].endswith(b'{"i": 4}')


async def test_a_request_the_backend_read_and_dropped_is_not_sent_again() -> None:
    """A POST is not idempotent: once the backend may have it, a dropped connection is an error, not a resend."""
    received = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        nonlocal received
        await read_request(reader)
        received += 1
        writer.write(json_answer(b'{"first": %d}' % n))
        await writer.drain()
        await read_request(reader)  # the second request on this connection: dropped unanswered
        received += 1

    async with scripted(handler) as (url, script, client):
        first = await client.post(url + "/v1/completions", b"{}", {}, TIMEOUTS)
        assert await first.read(LIMIT) == b'{"first": 1}'
        with pytest.raises(UpstreamDisconnected) as caught:
            await client.post(url + "/v1/completions", b"{}", {}, TIMEOUTS)
        assert not caught.value.retryable and caught.value.backend_fault
        assert received == 2 and script.connections == 1


async def test_a_fresh_connection_closed_before_answering_is_not_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)

    async with scripted(handler) as (url, script, client):
        with pytest.raises(UpstreamDisconnected, match="closed the connection") as caught:
            await client.post(url + "/v1/completions", b"{}", {}, TIMEOUTS)
        assert caught.value.backend == url + "/v1/completions"
        assert script.connections == 1


async def test_body_delimited_by_the_end_of_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"part two")
        await writer.drain()

    async with scripted(handler) as (url, script, client):
        response = await client.post(url + "/x", b"{}", {}, TIMEOUTS)
        assert await response.read(LIMIT) == b"part one, part two"
        again = await client.post(url + "/x", b"{}", {}, TIMEOUTS)
        assert await again.read(LIMIT) == b"part one, part two"
        assert script.connections == 2  # not reused: the answer said connection: close


async def test_a_malformed_answer_is_an_error_after_sending() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"this is not HTTP\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with scripted(handler) as (url, _, client):
        with pytest.raises(UpstreamDisconnected, match="malformed"):
            await client.post(url + "/x", b"{}", {}, TIMEOUTS)


async def test_silence_times_out_before_headers_and_between_body_chunks() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 2:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
            await writer.drain()
        await asyncio.sleep(5)

    async with scripted(handler) as (url, _, client):
        short = Timeouts(connect_s=1.0, first_byte_s=0.2)
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeout):
            await client.post(url + "/x", b"{}", {}, short)
        response = await client.post(url + "/x", b"{}", {}, short)
        with pytest.raises(UpstreamTimeout):
            await response.read(LIMIT)
        assert asyncio.get_running_loop().time() - started < 2.0


async def test_unreachable_backend_is_a_connect_error() -> None:
    client = UpstreamClient()
    await client.start()
    try:
        with pytest.raises(UpstreamConnectError, match="cannot connect"):
            await client.post(f"http://127.0.0.1:{free_port()}/x", b"{}", {}, TIMEOUTS)
    finally:
        await client.close()


SSE = [b'data: {"i": 0}\n\n', b'data: {"i": 1}\n\n', b"data: [DONE]\n\n"]


def chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


async def test_stream_events_across_odd_packet_boundaries_then_connection_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            wire = b"".join(chunked(event) for event in SSE) + b"0\r\n\r\n"
            for start in range(0, len(wire), 7):  # 7-byte writes split lines, events and chunk framing
                writer.write(wire[start : start + 7])
                await writer.drain()
                await asyncio.sleep(0.001)

    async with scripted(handler) as (url, script, client):
        for _ in range(2):
            response = await client.post(url + "/v1/chat/completions", b"{}", {}, TIMEOUTS)
            payloads = [p async for p in response.events(LIMIT)]
            assert payloads == [b'{"i": 0}', b'{"i": 1}', b"[DONE]"]
            response.close()
            await asyncio.sleep(0.05)
        assert script.connections == 1


async def test_closing_a_running_stream_drops_its_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(100):
            writer.write(chunked(b'data: {"i": %d}\n\n' % i))
            await writer.drain()
            await asyncio.sleep(0.02)

    async with scripted(handler) as (url, script, client):
        response = await client.post(url + "/v1/chat/completions", b"{}", {}, TIMEOUTS)
        events = response.events(LIMIT)
        assert await anext(events) == b'{"i": 0}'
        response.close()
        for _ in range(100):
            if script.disconnects:
                break
            await asyncio.sleep(0.01)
        assert script.disconnects == 1  # the backend saw the disconnect long before its 100 events


async def test_concurrent_requests_get_their_own_answers() -> None:
    async with scripted(echo_forever) as (url, script, client):

        async def one(size: int) -> bytes:
            response = await client.post(url + "/x", b"x" * size, {}, TIMEOUTS)
            return await response.read(LIMIT)

        answers = await asyncio.gather(*(one(i) for i in range(1, 21)))
        assert answers == [b"x" * i for i in range(1, 21)]
        assert script.connections == 20  # all in flight at once: one connection each
        again = await asyncio.gather(*(one(i) for i in range(1, 21)))
        assert again == answers
        assert script.connections == 20  # and all of them reused


async def test_closing_the_client_closes_connections_in_use_too() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(chunked(b"data: [DONE]\n\n"))  # the end of the SSE, but not yet of the HTTP answer
        await writer.drain()
        await asyncio.wait_for(reader.read(LIMIT), 5)  # b"" once the client closes the connection

    async with scripted(handler) as (url, script, client):
        response = await client.post(url + "/v1/chat/completions", b"{}", {}, TIMEOUTS)
        assert await anext(response.events(LIMIT)) == b"[DONE]"
        response.close()  # waits a grace period for the answer's last bytes before dropping the connection
        await client.close()
        for _ in range(50):  # well within the 1 s grace after which the response alone would drop it
            if script.disconnects:
                break
            await asyncio.sleep(0.01)
        assert script.disconnects == 1


async def test_a_backend_cookie_is_never_sent_back_on_later_requests() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(json_answer(b"{}", extra=b"set-cookie: session=client-a; Path=/\r\n"))
            await writer.drain()

    async with scripted(handler) as (url, _, client):
        named = url.replace("127.0.0.1", "localhost")  # a jar would keep cookies of a host name, not of an IP
        for _ in range(2):
            response = await client.post(named + "/v1/chat/completions", b"{}", {}, TIMEOUTS)
            assert await response.read(LIMIT) == b"{}"
    assert len(seen) == 2 and b"cookie" not in seen[1].lower().replace(b"set-cookie", b"")
