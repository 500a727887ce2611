"""What every simulated API request goes through: JSON in and out, model lookup, arrival counts, fault rolls,
and a running slot (admission, in-flight tracking, cancellation counts) held while the answer is made.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from random import Random

from aiohttp import web

from gateway.sim.engine import Fault, roll_fault
from gateway.sim.errors import SimError, bad_request, injected, model_not_found, unsupported
from gateway.sim.profile import ModelProfile
from gateway.sim.state import SimState
from gateway.sim.stats import ModelStats
from gateway.wire import dumps, loads

SIM_STATE = web.AppKey("sim_state", SimState)
_JSON = "application/json"
API_NAMES = {
    "chat": "Chat Completions",
    "completions": "Completions",
    "responses": "Responses",
    "embeddings": "Embeddings",
}
"""The API names vLLM uses in "The model does not support ... API"."""
_KIND_APIS = {"generate": {"chat", "completions", "responses"}, "embedding": {"embeddings"}}


def json_response(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=dumps(obj), status=status, content_type=_JSON)


def error_response(err: SimError) -> web.Response:
    return json_response(err.body(), err.status)


async def read_json(request: web.Request) -> object:
    try:
        return loads(await request.read())
    except ValueError as exc:
        raise bad_request(f"JSON decode error: {exc}", "body") from exc


def lookup(state: SimState, model: str | None) -> tuple[str, ModelStats]:
    """The served model a request names (the first served one when it names none), or vLLM's 404."""
    name = state.models[0] if model is None else model
    stats = state.stats.models.get(name)
    if stats is None:
        state.stats.unknown_model += 1
        raise model_not_found(name)
    return name, stats


def count_arrival(request: web.Request, stats: ModelStats, api: str, stream: bool) -> None:
    stats.requests += 1
    setattr(stats, api, getattr(stats, api) + 1)
    if stream:
        stats.stream += 1
    else:
        stats.non_stream += 1
    headers = request.headers
    if headers.get("x-gateway-shadow") == "1":
        stats.shadow += 1
    stats.last_headers = {key.lower(): value for key, value in headers.items()}


def check_kind(name: str, profile: ModelProfile, stats: ModelStats, api: str) -> None:
    """A 400 (counted as rejected) when the model's ``kind`` does not serve ``api``."""
    if profile.kind != "any" and api not in _KIND_APIS[profile.kind]:
        stats.rejected += 1
        raise unsupported(name, API_NAMES[api])


def request_rng(state: SimState, name: str, stats: ModelStats) -> Random:
    """This request's RNG: a function of the profile seed, the model and how many requests it has had."""
    return Random(f"{state.profile.seed}:{name}:{stats.requests}")


def faults(profile: ModelProfile, stats: ModelStats, rng: Random) -> Fault | None:
    """Roll the injected faults; raise (and count) an injected error or rate limit, return a hang."""
    fault = roll_fault(profile, rng)
    if fault is Fault.RATE_LIMIT:
        stats.rate_limited += 1
        raise injected(429)
    if fault is Fault.ERROR:
        stats.errors += 1
        raise injected(profile.error_status)
    return fault


@asynccontextmanager
async def running(state: SimState, name: str, stats: ModelStats, fault: Fault | None) -> AsyncIterator[None]:
    """Hold one of the model's running slots (queueing for it first), then hang if the roll said so.

    A client that goes away cancels the handler (``handler_cancellation``): that is counted as ``cancelled``.
    """
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
        yield
    except (asyncio.CancelledError, ConnectionResetError):
        stats.cancelled += 1
        raise
    finally:
        if task is not None:
            state.inflight.discard(task)
        if admitted:
            state.release(name, stats)
