"""The simulator's live state: the profile snapshot, the counters, per-model admission, recent responses.

A live change (``POST /sim/config``) builds a new ``SimProfile`` and recomputes the effective per-model profiles
on the side, then swaps both references; a request reads ``effective[model]`` once when it arrives.

Admission mimics vLLM's scheduler at the level a router can observe: at most ``max_num_seqs`` requests of a
model run at once (``running``), later ones queue in arrival order (``waiting``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from pydantic import ValidationError

from gateway.sim.errors import bad_request
from gateway.sim.profile import ModelProfile, SimProfile
from gateway.sim.responses import ResponseStore
from gateway.sim.shapes import fingerprint
from gateway.sim.stats import ModelStats, SimStats

_CONFIG_KEYS = frozenset({"model", "set", "health_status", "seed", "reset_stats", "reset_profile"})


class SimState:
    """Everything a request handler reads or updates; one per app, only touched from the event loop."""

    def __init__(self, models: list[str], profile: SimProfile) -> None:
        if not models:
            raise ValueError("the simulator needs at least one model name")
        self.models = list(dict.fromkeys(models))
        self.stats = SimStats.for_models(self.models)
        self.inflight: set[asyncio.Task[Any]] = set()
        """Generation handlers now running, cancelled when the server stops."""
        self.responses = ResponseStore()
        """Finished ``/v1/responses`` answers, for ``previous_response_id`` and ``GET /v1/responses/{id}``."""
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {name: deque() for name in self.models}
        self._initial = profile
        self._swap(profile)

    def serve(self, names: list[str]) -> None:
        """Serve ``names`` too (a reloaded gateway policy may give an embedded simulator more models)."""
        for name in names:
            if name not in self._waiters:
                self.models.append(name)
                self.stats.models[name] = ModelStats()
                self._waiters[name] = deque()
                self.effective[name] = self.profile.for_model(name)

    def _swap(self, profile: SimProfile) -> None:
        self.effective: dict[str, ModelProfile] = {name: profile.for_model(name) for name in self.models}
        self.profile = profile
        self.fingerprint = fingerprint(profile.seed)
        for name in self.models:
            self._drain(name)

    async def admit(self, name: str, stats: ModelStats) -> None:
        """Wait for a running slot of ``name``. Cancellation while queued gives nothing back to release."""
        waiters = self._waiters[name]
        if not waiters and stats.running < self.effective[name].max_num_seqs:
            stats.running += 1
            return
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(slot)
        stats.waiting += 1
        try:
            await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                self.release(name, stats)
            else:
                waiters.remove(slot)
            raise
        finally:
            stats.waiting -= 1

    def release(self, name: str, stats: ModelStats) -> None:
        stats.running -= 1
        self._drain(name)

    def _drain(self, name: str) -> None:
        waiters, stats, limit = self._waiters[name], self.stats.models[name], self.effective[name].max_num_seqs
        while waiters and stats.running < limit:
            slot = waiters.popleft()
            if not slot.done():
                stats.running += 1
                slot.set_result(None)

    def config_json(self) -> dict[str, Any]:
        """The effective configuration: seed, health status, default profile, and each served model's."""
        return {
            "seed": self.profile.seed,
            "health_status": self.profile.health_status,
            "default": self.profile.default.model_dump(),
            "models": {name: p.model_dump() for name, p in self.effective.items()},
        }

    def configure(self, body: object) -> dict[str, Any]:
        """Apply a ``POST /sim/config`` body; raise a 400 ``SimError`` and change nothing when it is bad.

        Keys, applied in this order: ``reset_profile: true`` (back to the profile the server started with),
        ``set`` (profile fields) for ``model`` or, without it, for every model, ``health_status``, ``seed``,
        ``reset_stats: true`` (zero the counters, which also restarts each model's seeded sequence).
        """
        if not isinstance(body, dict) or not body:
            raise bad_request(f"expected a JSON object with some of {sorted(_CONFIG_KEYS)}")
        unknown = sorted(set(body) - _CONFIG_KEYS)
        if unknown:
            raise bad_request(f"unknown key(s) {unknown}; expected {sorted(_CONFIG_KEYS)}", unknown[0])
        model, changes = body.get("model"), body.get("set")
        if model is not None and model not in self.stats.models:
            raise bad_request(f"model {model!r} is not served (served: {self.models})", "model")
        if model is not None and changes is None:
            raise bad_request("'model' needs 'set'", "set")
        if changes is not None and not isinstance(changes, dict):
            raise bad_request("'set' must be an object of profile fields", "set")
        flags = {key: body.get(key, False) for key in ("reset_profile", "reset_stats")}
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise bad_request(f"'{key}' must be a boolean", key)
        top = {key: body[key] for key in ("health_status", "seed") if key in body}
        profile = self._initial if flags["reset_profile"] else self.profile
        try:
            profile = profile.with_changes(model, changes) if changes else profile
            profile = profile.replace(**top) if top else profile
        except ValidationError as exc:
            raise bad_request(_describe(exc), "set" if changes else next(iter(top), None)) from exc
        self._swap(profile)
        if flags["reset_stats"]:
            self.stats.reset()
        return self.config_json()


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
