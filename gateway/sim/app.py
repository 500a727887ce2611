"""The simulated vLLM server's routes and handlers (aiohttp, kept lean: it is the floor in benchmarks).

A generation request goes ``parse → model lookup → limits → fault rolls → plan → admission → answer``, the
same order in which vLLM returns its 400s, 404s and results. Handlers run with ``handler_cancellation``, so a
client that goes away cancels its handler (``CancelledError``), which is counted as ``cancelled``.

Timing: a non-streamed answer is sent after ``ttft_s + per_token_s * (tokens - 1)``. A stream sends its
headers and role chunk after ``ttft_s`` (vLLM sends the role chunk with the first token), the first content
chunk right after, then one content chunk every ``per_token_s``.
"""

from __future__ import annotations

import asyncio
import time
from random import Random

from aiohttp import web

from gateway.sim.engine import Answer, Fault, check_limits, new_id, plan, roll_fault
from gateway.sim.errors import SimError, bad_request, injected, model_not_found
from gateway.sim.parsing import GenRequest, parse_chat, parse_completion
from gateway.sim.profile import ModelProfile, SimProfile
from gateway.sim.shapes import chat_body, chat_stream, completion_body, completion_stream, models_body
from gateway.sim.state import SimState
from gateway.sim.stats import ModelStats, render_metrics
from gateway.wire import dumps, loads

SIM_STATE = web.AppKey("sim_state", SimState)
_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}
_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/sim/config", "/sim/stats"}
)


def _json(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=dumps(obj), status=status, content_type=_JSON)


def _error(err: SimError) -> web.Response:
    return _json(err.body(), err.status)


async def _read_json(request: web.Request) -> object:
    try:
        return loads(await request.read())
    except ValueError as exc:
        raise bad_request(f"JSON decode error: {exc}", "body") from exc


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def _generate(request: web.Request, *, chat: bool) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    state.stats.total_requests += 1
    try:
        body = await _read_json(request)
        req = parse_chat(body) if chat else parse_completion(body)
    except SimError as err:
        state.stats.invalid_requests += 1
        return _error(err)
    name = state.models[0] if req.model is None else req.model
    stats = state.stats.models.get(name)
    if stats is None:
        state.stats.unknown_model += 1
        return _error(model_not_found(name))
    _count_arrival(request, stats, req)
    profile = state.effective[name]
    try:
        fault, answer = _decide(state, name, stats, profile, req)
    except SimError as err:
        return _error(err)
    task = asyncio.current_task()
    if task is not None:
        state.inflight.add(task)
    admitted = False
    try:
        await state.admit(name, stats)
        admitted = True
        if fault is Fault.HANG:
            stats.hung += 1
            await asyncio.get_running_loop().create_future()
        if req.stream:
            return await _stream(request, state, stats, profile, req, answer, name)
        return await _respond(state, stats, profile, req, answer, name)
    except (asyncio.CancelledError, ConnectionResetError):
        stats.cancelled += 1
        raise
    finally:
        if task is not None:
            state.inflight.discard(task)
        if admitted:
            state.release(name, stats)


def _decide(
    state: SimState, name: str, stats: ModelStats, profile: ModelProfile, req: GenRequest
) -> tuple[Fault | None, Answer]:
    """Limits, fault rolls and the planned answer; raises (and counts) the error answers."""
    rng = Random(f"{state.profile.seed}:{name}:{stats.requests}")
    try:
        cap = check_limits(req, profile)
    except SimError:
        stats.rejected += 1
        raise
    fault = roll_fault(profile, rng)
    if fault is Fault.RATE_LIMIT:
        stats.rate_limited += 1
        raise injected(429)
    if fault is Fault.ERROR:
        stats.errors += 1
        raise injected(profile.error_status)
    answer = plan(req, profile, cap, rng)
    stats.prompt_tokens += req.prompt_tokens
    stats.refusals += answer.refusal
    stats.invalid_json += answer.invalid_json
    stats.malformed_tool_calls += answer.malformed_tool_call
    return fault, answer


async def _respond(
    state: SimState, stats: ModelStats, profile: ModelProfile, req: GenRequest, answer: Answer, name: str
) -> web.Response:
    delay = profile.ttft_s + profile.per_token_s * max(answer.completion_tokens - 1, 0)
    if delay > 0:
        await asyncio.sleep(delay)
    cid, created = new_id("chatcmpl-" if req.chat else "cmpl-"), int(time.time())
    build = chat_body if req.chat else completion_body
    response = _json(build(cid, created, name, answer, req.prompt_tokens, state.fingerprint))
    _count_finish(stats, answer, answer.completion_tokens)
    return response


def _count_arrival(request: web.Request, stats: ModelStats, req: GenRequest) -> None:
    stats.requests += 1
    if req.chat:
        stats.chat += 1
    else:
        stats.completions += 1
    if req.stream:
        stats.stream += 1
    else:
        stats.non_stream += 1
    headers = request.headers
    if headers.get("x-gateway-shadow") == "1":
        stats.shadow += 1
    stats.last_headers = {key.lower(): value for key, value in headers.items()}


def _count_finish(stats: ModelStats, answer: Answer, tokens: int) -> None:
    stats.completed += 1
    stats.generation_tokens += tokens
    reason = "stop" if answer.finish_reason == "tool_calls" else answer.finish_reason
    stats.finished[reason] = stats.finished.get(reason, 0) + 1


async def _stream(
    request: web.Request,
    state: SimState,
    stats: ModelStats,
    profile: ModelProfile,
    req: GenRequest,
    answer: Answer,
    name: str,
) -> web.StreamResponse:
    if profile.ttft_s > 0:
        await asyncio.sleep(profile.ttft_s)
    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    cid, created = new_id("chatcmpl-" if req.chat else "cmpl-"), int(time.time())
    frames = (chat_stream if req.chat else completion_stream)(
        cid, created, name, answer, req.prompt_tokens, req.include_usage, state.fingerprint
    )
    cut, per_token, sent = profile.stream_cut_after, profile.per_token_s, 0
    for frame, is_content in frames:
        if is_content:
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
    _count_finish(stats, answer, answer.completion_tokens)
    return response


def _cut_connection(request: web.Request) -> None:
    """Drop the connection mid-body, as a crashed server would: the client sees an incomplete stream."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def list_models(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    lengths = {name: state.effective[name].max_model_len for name in state.models}
    return _json(models_body(lengths, int(time.time())))


async def health(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    state.stats.health_checks += 1
    return web.Response(status=state.profile.health_status)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    limits = {name: p.max_num_seqs for name, p in state.effective.items()}
    return web.Response(text=render_metrics(state.stats, limits), content_type="text/plain", charset="utf-8")


async def get_config(request: web.Request) -> web.Response:
    return _json(request.app[SIM_STATE].config_json())


async def post_config(request: web.Request) -> web.Response:
    try:
        return _json(request.app[SIM_STATE].configure(await _read_json(request)))
    except SimError as err:
        return _error(err)


async def get_stats(request: web.Request) -> web.Response:
    return _json(request.app[SIM_STATE].stats.as_json())


async def not_found(request: web.Request) -> web.Response:
    """FastAPI's answers for unknown paths (404) and known paths with the wrong method (405)."""
    if request.path in _PATHS:
        return _json({"detail": "Method Not Allowed"}, 405)
    return _json({"detail": "Not Found"}, 404)


def build_app(models: list[str], profile: SimProfile | None = None) -> web.Application:
    """The simulator as an aiohttp application serving ``models`` (the first is used when a request omits one)."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SIM_STATE] = SimState(models, profile or SimProfile())
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/sim/config", get_config)
    app.router.add_post("/sim/config", post_config)
    app.router.add_get("/sim/stats", get_stats)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
