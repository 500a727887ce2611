"""The simulated vLLM server's routes and the handlers that are not generation (aiohttp, kept lean: it is the
floor in benchmarks).

Generation (chat, completions, responses) is in ``generate``; ``/v1/embeddings`` is here: parse, model lookup,
kind, context and ``dimensions`` checks, fault rolls, admission, then the vectors after ``ttft_s`` (hashed in a
worker thread when the inputs are large, so the event loop keeps serving). Handlers run with
``handler_cancellation``, so a client that goes away cancels its handler, counted as ``cancelled``.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from gateway.sim.content import new_id
from gateway.sim.embeddings import EmbeddingsCall, check_dimensions, embed_all, embeddings_body, parse_embeddings
from gateway.sim.errors import SimError, bad_request, response_not_found
from gateway.sim.generate import chat_completions, completions, responses
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
from gateway.sim.profile import ModelProfile, SimProfile
from gateway.sim.shapes import models_body
from gateway.sim.state import SimState
from gateway.sim.stats import ModelStats, render_metrics

__all__ = ["SIM_STATE", "build_app"]

THREAD_WORK = 200_000
"""Input characters (or token ids) past which embedding vectors are hashed in a worker thread."""
_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/models",
        "/health",
        "/metrics",
        "/sim/config",
        "/sim/stats",
    }
)


async def embeddings(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    state.stats.total_requests += 1
    try:
        call = parse_embeddings(await read_json(request))
    except SimError as err:
        state.stats.invalid_requests += 1
        return error_response(err)
    try:
        name, stats = lookup(state, call.model)
    except SimError as err:
        return error_response(err)
    count_arrival(request, stats, "embeddings", False)
    profile = state.effective[name]
    try:
        check_kind(name, profile, stats, "embeddings")
        dimensions = _checked_input(call, name, profile, stats)
        fault = faults(profile, stats, request_rng(state, name, stats))
    except SimError as err:
        return error_response(err)
    stats.prompt_tokens += call.prompt_tokens
    async with running(state, name, stats, fault):
        if profile.ttft_s > 0:
            await asyncio.sleep(profile.ttft_s)
        size = profile.embedding_dim
        if call.work > THREAD_WORK:
            vectors = await asyncio.to_thread(embed_all, call, size, dimensions)
        else:
            vectors = embed_all(call, size, dimensions)
        response = json_response(embeddings_body(new_id("embd-", 16), int(time.time()), name, vectors, call))
        stats.completed += 1
        return response


def _checked_input(call: EmbeddingsCall, name: str, profile: ModelProfile, stats: ModelStats) -> int:
    """vLLM's 400s for an input longer than the context and for ``dimensions``; the vector length to answer."""
    try:
        longest = max(call.tokens)
        if longest > profile.max_model_len:
            raise bad_request(
                f"This model's maximum context length is {profile.max_model_len} tokens. However, you requested "
                f"{longest} tokens in the input for embedding generation. Please reduce the length of the input.",
                "input",
            )
        return check_dimensions(call, name, profile.embedding_dim)
    except SimError:
        stats.rejected += 1
        raise


async def get_response(request: web.Request) -> web.Response:
    """``GET /v1/responses/{id}``: a stored response, or vLLM's 404."""
    response_id = request.match_info["response_id"]
    stored = request.app[SIM_STATE].responses.get(response_id)
    if stored is None:
        return error_response(response_not_found(response_id))
    return web.Response(body=stored.body, content_type="application/json")


async def list_models(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    lengths = {name: state.effective[name].max_model_len for name in state.models}
    return json_response(models_body(lengths, int(time.time())))


async def health(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    state.stats.health_checks += 1
    return web.Response(status=state.profile.health_status)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    limits = {name: p.max_num_seqs for name, p in state.effective.items()}
    return web.Response(text=render_metrics(state.stats, limits), content_type="text/plain", charset="utf-8")


async def get_config(request: web.Request) -> web.Response:
    return json_response(request.app[SIM_STATE].config_json())


async def post_config(request: web.Request) -> web.Response:
    try:
        return json_response(request.app[SIM_STATE].configure(await read_json(request)))
    except SimError as err:
        return error_response(err)


async def get_stats(request: web.Request) -> web.Response:
    return json_response(request.app[SIM_STATE].stats.as_json())


async def not_found(request: web.Request) -> web.Response:
    """FastAPI's answers for unknown paths (404) and known paths with the wrong method (405)."""
    if request.path in _PATHS:
        return json_response({"detail": "Method Not Allowed"}, 405)
    return json_response({"detail": "Not Found"}, 404)


def build_app(models: list[str], profile: SimProfile | None = None) -> web.Application:
    """The simulator as an aiohttp application serving ``models`` (the first is used when a request omits one)."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SIM_STATE] = SimState(models, profile or SimProfile())
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_get("/v1/responses/{response_id}", get_response)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/sim/config", get_config)
    app.router.add_post("/sim/config", post_config)
    app.router.add_get("/sim/stats", get_stats)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
