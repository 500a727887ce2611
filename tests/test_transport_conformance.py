"""The upstream transport's contract, black-box: a running gateway in front of misbehaving raw-socket backends.

Each fault a backend can commit (an interim ``1xx``, bytes past the end of an answer, an answer too large or not
JSON, wrong types, odd SSE framing, dripped bytes, a connection closed mid-request) must end in the client's own
answer or a clean OpenAI-shaped error within the deadline, without ever reusing a connection that went out of step,
leaking a backend address or leaving sockets or slowness behind. The faults and the policy are in
:mod:`tests.transport_faults`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.harness import Stack, free_port
from tests.rawbackend import RawBackend
from tests.transport_faults import (
    FAULTS,
    FRAMINGS,
    SMUGGLED,
    TOTAL_S,
    WORDS,
    Env,
    assert_error_shape,
    assert_fell_back,
    assert_stream_error_end,
    assert_upstream_error,
    body,
    close_after_head,
    content,
    eat,
    echo_text_of,
    new_id,
    policy,
    post,
    sse_payloads,
    stream_text,
)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    down_port = free_port()
    with (
        RawBackend(FAULTS) as raw,
        RawBackend(FAULTS) as dirty,
        RawBackend(on_head=close_after_head) as mute,
        RawBackend() as spare,
        Stack(policy(raw, dirty, mute, spare, down_port), {}) as stack,
        httpx.Client(base_url=stack.url, timeout=15) as client,
    ):
        yield Env(stack, client, raw, dirty, mute, spare, down_port)


# 1. Interim 1xx answers


@pytest.mark.parametrize("fault", ["interim-100", "interim-103"])
def test_interim_answers_are_skipped_in_sequence(env: Env, fault: str) -> None:
    with openai.OpenAI(base_url=env.stack.url + "/v1", api_key="x", max_retries=0, timeout=10) as client:
        for i in range(12):
            request_id = new_id(fault)
            model = fault if i % 3 else "dirty-echo"
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": request_id}
            )
            assert raw.headers["x-gateway-model"] == model
            assert raw.parse().choices[0].message.content == echo_text_of(request_id)
        request_id = new_id(fault)
        with client.chat.completions.create(
            model=fault,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"x-request-id": request_id},
        ) as stream:
            got = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert got == echo_text_of(request_id)


async def test_interim_answers_under_concurrency_each_client_gets_its_own(env: Env) -> None:
    models = ["interim-100", "interim-103", "dirty-echo"]
    async with httpx.AsyncClient(base_url=env.stack.url, timeout=15) as client:

        async def one(i: int) -> tuple[str, int, str]:
            request_id = new_id("concurrent")
            response = await client.post(
                "/v1/chat/completions", json=body(models[i % 3]), headers={"x-request-id": request_id}
            )
            got = response.json()["choices"][0]["message"]["content"] if response.status_code == 200 else response.text
            return request_id, response.status_code, got

        for _ in range(3):
            answers = await asyncio.gather(*(one(i) for i in range(30)))
            wrong = [(rid, status, got) for rid, status, got in answers if (status, got) != (200, echo_text_of(rid))]
            assert not wrong, wrong[:5]


# 2. Bytes past the end of an answer


@pytest.mark.parametrize("fault", ["overrun", "smuggle", "smuggle-chunked", "smuggle-late"])
def test_bytes_after_an_answer_never_reach_a_client_and_the_connection_is_dropped(env: Env, fault: str) -> None:
    post(env, "dirty-echo", new_id("warm"))  # an idle keep-alive connection for the fault to land on, or not
    request_id = new_id(fault)
    response = post(env, fault, request_id)
    assert SMUGGLED not in response.text
    if response.status_code == 200:
        assert content(response) == echo_text_of(request_id)
    else:
        assert_upstream_error(response)
    time.sleep(0.15)  # the late variant's extra answer is on the wire by now
    for _ in range(env.dirty.open_conns() + 1):  # enough to come round to every pooled connection, FIFO or LIFO
        follow_up = new_id("after-" + fault)
        answer = post(env, "dirty-echo", follow_up)
        assert SMUGGLED not in answer.text
        assert content(answer) == echo_text_of(follow_up)
    conn = env.dirty.conn_of(request_id)
    assert [r.request_id for r in conn.requests][-1] == request_id, "a connection out of step was reused"
    assert env.dirty.wait_for(lambda: conn.peer_closed, 3), "the gateway kept a connection out of step open"


# 3. Answer sizes


@pytest.mark.parametrize(("fault", "size"), [("big-5m", 5_000_000), ("big-20m", 20_000_000)])
def test_large_answers_up_to_the_cap_arrive_intact(env: Env, fault: str, size: int) -> None:
    response = post(env, fault, new_id(fault))
    assert content(response) == "x" * size


@pytest.mark.parametrize("fault", ["over-cap", "over-cap-chunked", "gzip-bomb"])
def test_answers_over_the_cap_are_a_clean_error_and_fall_back(env: Env, fault: str) -> None:
    started = time.monotonic()
    assert_upstream_error(post(env, fault, new_id(fault)))
    request_id = new_id("fb-" + fault)
    assert_fell_back(post(env, "fb-" + fault, request_id), "fb-" + fault, request_id)
    assert time.monotonic() - started < 2 * TOTAL_S + 3


# 4. Answers that are not JSON


@pytest.mark.parametrize("fault", ["status-204", "status-304", "html-200", "json-garbage", "gzip-raw"])
def test_non_json_answers_are_upstream_errors_and_fall_back(env: Env, fault: str) -> None:
    error = assert_upstream_error(post(env, fault, new_id(fault)))
    assert error["type"] != "server_error"
    request_id = new_id("fb-" + fault)
    assert_fell_back(post(env, "fb-" + fault, request_id), "fb-" + fault, request_id)


def test_a_gzip_answer_with_its_content_encoding_is_decoded(env: Env) -> None:
    request_id = new_id("gzip")
    response = post(env, "gzip-encoded", request_id)
    assert content(response) == echo_text_of(request_id)
    assert response.headers["x-gateway-model"] == "gzip-encoded"


# 5. Wrong types


@pytest.mark.parametrize("fault", ["choices-str", "no-choices"])
def test_answers_without_a_choices_list_are_upstream_errors_and_fall_back(env: Env, fault: str) -> None:
    assert_upstream_error(post(env, fault, new_id(fault)))
    request_id = new_id("fb-" + fault)
    assert_fell_back(post(env, "fb-" + fault, request_id), "fb-" + fault, request_id)


@pytest.mark.parametrize("fault", ["usage-str", "usage-bad-tokens", "usage-list-tokens"])
def test_usage_of_the_wrong_type_is_relayed_never_a_500(env: Env, fault: str) -> None:
    request_id = new_id(fault)
    response = post(env, fault, request_id)
    assert content(response) == echo_text_of(request_id)


@pytest.mark.parametrize("fault", ["stream-array-mid", "stream-text-mid", "stream-choices-mid"])
def test_a_malformed_chunk_mid_stream_ends_it_with_an_error_event(env: Env, fault: str) -> None:
    payloads = assert_stream_error_end(post(env, fault, new_id(fault), stream=True))
    assert stream_text(payloads[:1]) == "a"


@pytest.mark.parametrize("fault", ["stream-array-first", "stream-choices-first"])
def test_a_malformed_first_chunk_is_an_upstream_error_and_falls_back(env: Env, fault: str) -> None:
    assert_upstream_error(post(env, fault, new_id(fault), stream=True))
    request_id = new_id("fb-" + fault)
    assert_fell_back(post(env, "fb-" + fault, request_id, stream=True), "fb-" + fault, request_id)


def test_stream_usage_of_the_wrong_type_is_relayed(env: Env) -> None:
    response = post(env, "stream-usage-bad", new_id("usage"), stream=True)
    assert response.status_code == 200
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]" and stream_text(payloads) == "".join(WORDS)


# 6. SSE framing


@pytest.mark.parametrize("fault", sorted(FRAMINGS))
def test_sse_framing_variants_reach_the_client_as_the_same_chunks(env: Env, fault: str) -> None:
    response = post(env, fault, new_id(fault), stream=True)
    assert response.status_code == 200, response.text[:500]
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]", payloads
    try:
        chunks = [json.loads(p) for p in payloads[:-1]]
    except ValueError:
        pytest.fail(f"the client got chunks that are not JSON: {payloads}")
    assert all("error" not in chunk for chunk in chunks), chunks
    assert [chunk["choices"][0]["delta"]["content"] for chunk in chunks[:3]] == WORDS


# 7. Deadlines


DEADLINES = {  # fault: (stream, whether the stream had started when the deadline passed)
    "drip-head": (False, False),
    "drip-body": (False, False),
    "drip-stream-start": (True, False),
    "drip-stream-mid": (True, True),
    "comments-forever": (True, False),
    "comments-after-event": (True, True),
}


async def test_total_s_is_a_hard_deadline_for_the_whole_answer(env: Env) -> None:
    async with httpx.AsyncClient(base_url=env.stack.url, timeout=TOTAL_S + 8) as client:

        async def one(fault: str) -> str | None:
            stream, started = DEADLINES[fault]
            request_id = new_id(fault)
            t0 = time.monotonic()
            try:
                response = await client.post(
                    "/v1/chat/completions", json=body(fault, stream=stream), headers={"x-request-id": request_id}
                )
            except httpx.HTTPError as exc:
                return f"{fault}: {exc!r} after {time.monotonic() - t0:.1f}s"
            elapsed = time.monotonic() - t0
            try:
                assert elapsed < TOTAL_S + 1.5, f"answer ended after {elapsed:.1f}s"
                if started:
                    assert_stream_error_end(response)
                else:
                    assert response.status_code == 504, response.status_code
                    assert_error_shape(response.json())
                conn = env.raw.conn_of(request_id)
                assert env.raw.wait_for(lambda: conn.peer_closed, 1.5), "the backend connection was kept"
            except AssertionError as exc:
                return f"{fault}: {exc}"
            return None

        failures = [f for f in await asyncio.gather(*(one(fault) for fault in DEADLINES)) if f]
    assert not failures, "\n".join(failures)


# 8. A backend that closes while the request is being written


def test_a_backend_that_closes_before_reading_the_body_gets_a_clean_answer(env: Env) -> None:
    prompt = "p" * 2_000_000
    for model in ("closehead", "fb-closehead"):
        request_id = new_id(model)
        response = post(env, model, request_id, text=prompt)
        if response.status_code == 200:
            assert model == "fb-closehead"
            assert_fell_back(response, model, request_id)
        else:
            assert_upstream_error(response)
        received = env.mute.requests_with_id(request_id)
        assert received and all(r.body is None for r in received), "the closing backend never saw the request"


@pytest.mark.parametrize("model", ["eat", "fb-eat"])
def test_a_post_the_backend_received_is_never_sent_again(env: Env, model: str) -> None:
    for _ in range(3):
        post(env, "echo", new_id("warm"))  # so the request may go out on a reused keep-alive connection
        request_id = new_id(model)
        response = post(env, model, request_id)
        assert_upstream_error(response)
        assert env.receipts(request_id) == 1, [(r.conn, r.index) for r in env.raw.requests_with_id(request_id)]


# 9. No backend addresses in what the client sees


LEAK_CASES = [
    ("down", False),
    ("fb-down", False),
    ("eat", False),
    ("closehead", False),
    ("status-204", False),
    ("html-200", False),
    ("over-cap", False),
    ("choices-str", False),
    ("stream-array-first", True),
    ("stream-array-mid", True),
]


@pytest.mark.parametrize(("model", "stream"), LEAK_CASES)
def test_error_messages_never_name_a_backend_address(env: Env, model: str, stream: bool) -> None:
    if model == "fb-down":
        env.spare.scripts["good"] = eat  # the fallback fails too: the client hears about both attempts
    try:
        response = post(env, model, new_id(model), stream=stream)
    finally:
        env.spare.scripts.pop("good", None)
    assert response.status_code >= 500 or '"error"' in response.text, (response.status_code, response.text[:300])
    assert "http://" not in response.text and "https://" not in response.text, response.text[:500]
    for address in env.addresses():
        assert address not in response.text, (address, response.text[:500])


# 10. Nothing left behind


FAULT_BURST = [
    ("smuggle", False),
    ("smuggle-late", False),
    ("smuggle-chunked", False),
    ("overrun", False),
    ("interim-100", False),
    ("eat", False),
    ("fb-eat", False),
    ("status-204", False),
    ("fb-html-200", False),
    ("json-garbage", False),
    ("closehead", False),
    ("choices-str", False),
    ("fb-choices-str", False),
    ("down", False),
    ("drip-body", False),
    ("stream-array-mid", True),
    ("stream-array-first", True),
    ("comments-after-event", True),
]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled_fds() -> int:
    last, deadline = open_fds(), time.monotonic() + 3
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = open_fds()
        if now == last:
            return now
        last = now
    return last


async def run_burst(env: Env, requests: list[tuple[str, bool]]) -> tuple[float, list[str]]:
    """Send all ``requests`` at once on one client: the burst's wall time and each answer's outcome (``ok`` for a
    healthy model's own answer, else the status and the start of the body, or the client's exception)."""
    limits = httpx.Limits(max_connections=len(requests))
    async with httpx.AsyncClient(base_url=env.stack.url, timeout=15, limits=limits) as client:

        async def one(model: str, stream: bool) -> str:
            request_id = new_id("burst")
            try:
                response = await client.post(
                    "/v1/chat/completions", json=body(model, stream=stream), headers={"x-request-id": request_id}
                )
            except httpx.HTTPError as exc:
                return repr(exc)
            outcome = f"{response.status_code} {response.text[:200]}"
            if response.status_code != 200 or model not in ("echo", "dirty-echo", "good"):
                return outcome
            if stream:
                got = stream_text([p for p in sse_payloads(response.text) if not p.startswith('{"error"')])
            else:
                got = response.json()["choices"][0]["message"]["content"]
            return "ok" if got == echo_text_of(request_id) else outcome

        started = time.monotonic()
        outcomes = await asyncio.gather(*(one(model, stream) for model, stream in requests))
        return time.monotonic() - started, list(outcomes)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_a_burst_of_faults_leaves_no_sockets_and_no_slowness_behind(env: Env) -> None:
    healthy = [(model, i % 2 == 0) for model in ("echo", "dirty-echo", "good") for i in range(30)]
    await run_burst(env, healthy)
    before = [await run_burst(env, healthy) for _ in range(2)]
    assert [o for _, outcomes in before for o in outcomes if o != "ok"] == []
    baseline = await asyncio.to_thread(settled_fds)
    faults_s, outcomes = await run_burst(env, FAULT_BURST * 2)
    assert not [o for o in outcomes if o.startswith("500")]
    assert faults_s < TOTAL_S + 3, f"the burst of faults took {faults_s:.1f}s"
    settled = await asyncio.to_thread(lambda: env.raw.wait_for(lambda: open_fds() <= baseline + 8, 6))
    assert settled, f"{open_fds()} open file descriptors, {baseline} before the faults"
    after = [await run_burst(env, healthy) for _ in range(2)]
    assert [o for _, outcomes in after for o in outcomes if o != "ok"] == []
    before_s, after_s = min(s for s, _ in before), min(s for s, _ in after)
    assert after_s < 2.5 * before_s + 0.3, (before_s, after_s)
