"""The generation handlers: ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/responses``.

A request goes ``parse → model lookup → kind → (previous response) → limits → fault rolls → plan →
admission → answer``, the order in which vLLM returns its 400s, 404s and results. The three APIs differ only in
how a body parses and how the planned answers are rendered (a ``Rendering``).

Timing: a non-streamed answer is sent after ``ttft_s + per_token_s * (tokens - 1)`` (the longest choice). A
stream sends its headers and first frames after ``ttft_s`` (vLLM sends the role chunk with the first token),
the first content chunk right after, then one generation step every ``per_token_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from gateway.sim.content import new_id
from gateway.sim.conversation import Turn
from gateway.sim.engine import Answer, check_limits, plan
from gateway.sim.errors import SimError
from gateway.sim.handling import (
    SIM_STATE,
    check_kind,
    count_arrival,
    error_response,
    faults,
    json_response,
    lookup,
    read_json,
    request_rng,
    running,
)
from gateway.sim.parsing import parse_chat, parse_completion
from gateway.sim.profile import ModelProfile
from gateway.sim.request import Api, GenRequest
from gateway.sim.responses import ResponsesCall, parse_responses
from gateway.sim.responses_shapes import output_items, response_body, response_stream
from gateway.sim.shapes import chat_body, completion_body
from gateway.sim.state import SimState
from gateway.sim.stats import ModelStats
from gateway.sim.streams import Frame, chat_stream, completion_stream
from gateway.wire import dumps

_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class Reply:
    """Everything a rendering needs: the answers and the request they answer."""

    rid: str
    created: int
    model: str
    req: GenRequest
    answers: list[Answer]
    cap: int
    fingerprint: str


class Rendering(Protocol):
    """How one API renders planned answers: a body, or stream frames."""

    id_prefix: str

    def body(self, reply: Reply) -> dict[str, Any]: ...

    def frames(self, reply: Reply) -> Iterator[Frame]: ...


class _Chat:
    id_prefix = "chatcmpl-"

    def body(self, reply: Reply) -> dict[str, Any]:
        return chat_body(
            reply.rid, reply.created, reply.model, reply.answers, reply.req.prompt_tokens, reply.fingerprint
        )

    def frames(self, reply: Reply) -> Iterator[Frame]:
        req = reply.req
        args = (reply.rid, reply.created, reply.model, reply.answers, req.prompt_tokens, req.include_usage)
        return chat_stream(*args, reply.fingerprint)


class _Completion:
    id_prefix = "cmpl-"

    def body(self, reply: Reply) -> dict[str, Any]:
        args = (reply.rid, reply.created, reply.model, reply.answers, reply.req.prompt_tokens, reply.fingerprint)
        return completion_body(*args)

    def frames(self, reply: Reply) -> Iterator[Frame]:
        req = reply.req
        args = (reply.rid, reply.created, reply.model, reply.answers, req.prompt_tokens, req.include_usage)
        return completion_stream(*args, reply.fingerprint)


class _Responses:
    """Renders a response and keeps it (unless ``store: false``) with its conversation, for continuing it."""

    id_prefix = "resp_"

    def __init__(self, call: ResponsesCall, turns: tuple[Turn, ...], state: SimState) -> None:
        self._call = call
        self._turns = turns
        self._state = state

    def _body(self, reply: Reply, *, done: bool) -> dict[str, Any]:
        answer = reply.answers[0]
        output, finished = (output_items(answer), answer) if done else (None, None)
        args = (reply.rid, reply.created, reply.model, self._call.echo, reply.cap, output, finished)
        return response_body(*args, reply.req.prompt_tokens)

    def _keep(self, reply: Reply, body: dict[str, Any]) -> None:
        if self._call.store:
            call = reply.answers[0].tool_call
            said = Turn("assistant", reply.answers[0].text, ((call.id, call.name),) if call else ())
            self._state.responses.put(reply.rid, dumps(body), (*self._turns, said))

    def body(self, reply: Reply) -> dict[str, Any]:
        body = self._body(reply, done=True)
        self._keep(reply, body)
        return body

    def frames(self, reply: Reply) -> Iterator[Frame]:
        final = self._body(reply, done=True)
        yield from response_stream(self._body(reply, done=False), final, reply.answers[0])
        self._keep(reply, final)


_CHAT, _COMPLETION = _Chat(), _Completion()


@dataclass(frozen=True, slots=True)
class Parsed:
    """A valid body: the model it names, its API, whether it streams, and how to finish preparing it."""

    model: str | None
    api: Api
    stream: bool
    prepare: Callable[[SimState], tuple[GenRequest, Rendering]]


def _parse(api: Api, body: object) -> Parsed:
    if api == "responses":
        call = parse_responses(body)

        def prepare(state: SimState) -> tuple[GenRequest, Rendering]:
            req, turns = call.request(state.responses)
            return req, _Responses(call, turns, state)

        return Parsed(call.model, api, call.stream, prepare)
    req = parse_chat(body) if api == "chat" else parse_completion(body)
    rendering: Rendering = _CHAT if api == "chat" else _COMPLETION
    return Parsed(req.model, api, req.stream, lambda _: (req, rendering))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completions")


async def responses(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "responses")


async def _generate(request: web.Request, api: Api) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    state.stats.total_requests += 1
    try:
        parsed = _parse(api, await read_json(request))
    except SimError as err:
        state.stats.invalid_requests += 1
        return error_response(err)
    try:
        name, stats = lookup(state, parsed.model)
    except SimError as err:
        return error_response(err)
    count_arrival(request, stats, api, parsed.stream)
    profile = state.effective[name]
    try:
        check_kind(name, profile, stats, api)
        req, rendering = parsed.prepare(state)
        cap = _checked_cap(req, profile, stats)
        rng = request_rng(state, name, stats)
        fault = faults(profile, stats, rng)
        answers = plan(req, profile, cap, rng, name)
    except SimError as err:
        return error_response(err)
    stats.prompt_tokens += req.prompt_tokens
    stats.refusals += any(a.refusal for a in answers)
    stats.invalid_json += any(a.invalid_json for a in answers)
    stats.malformed_tool_calls += any(a.malformed_tool_call for a in answers)
    rid = new_id(rendering.id_prefix, 16 if api == "responses" else 8)
    reply = Reply(rid, int(time.time()), name, req, answers, cap, state.fingerprint)
    async with running(state, name, stats, fault):
        if req.stream:
            return await _stream(request, stats, profile, rendering, reply)
        return await _respond(stats, profile, rendering, reply)


def _checked_cap(req: GenRequest, profile: ModelProfile, stats: ModelStats) -> int:
    try:
        return check_limits(req, profile)
    except SimError:
        stats.rejected += 1
        raise


async def _respond(stats: ModelStats, profile: ModelProfile, rendering: Rendering, reply: Reply) -> web.Response:
    tokens = max(a.completion_tokens for a in reply.answers)
    delay = profile.ttft_s + profile.per_token_s * max(tokens - 1, 0)
    if delay > 0:
        await asyncio.sleep(delay)
    response = json_response(rendering.body(reply))
    _count_finish(stats, reply.answers)
    return response


def _count_finish(stats: ModelStats, answers: list[Answer]) -> None:
    stats.completed += 1
    for answer in answers:
        stats.generation_tokens += answer.completion_tokens
        reason = "stop" if answer.finish_reason == "tool_calls" else answer.finish_reason
        stats.finished[reason] = stats.finished.get(reason, 0) + 1


async def _stream(
    request: web.Request, stats: ModelStats, profile: ModelProfile, rendering: Rendering, reply: Reply
) -> web.StreamResponse:
    if profile.ttft_s > 0:
        await asyncio.sleep(profile.ttft_s)
    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    cut, per_token, sent = profile.stream_cut_after, profile.per_token_s, 0
    for frame, is_step in rendering.frames(reply):
        if is_step:
            if sent and per_token > 0:
                await asyncio.sleep(per_token)
            sent += 1
        await response.write(frame)
        if cut is not None and sent >= cut:
            stats.stream_cut += 1
            stats.generation_tokens += sent
            _cut_connection(request)
            return response
    await response.write_eof()
    _count_finish(stats, reply.answers)
    return response


def _cut_connection(request: web.Request) -> None:
    """Drop the connection mid-body, as a crashed server would: the client sees an incomplete stream."""
    transport = request.transport
    if transport is not None:
        transport.abort()
