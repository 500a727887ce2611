"""Where each evaluated model is reached: its policy backends, called directly (no routing, no fallback).

An offline comparison must measure the model, not the gateway's routing, so every case goes straight to one of the
model's own replicas. ``sim://NAME`` backends are simulated vLLM servers started here on loopback ports, exactly as
:class:`gateway.runtime.Gateway` starts them, so ``routing_policies/local.yaml`` works without a GPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.policy.schema import PolicySpec
from gateway.sim import SimProfile, SimServer

log = logging.getLogger("gateway.promote")

SIM_SCHEME = "sim://"


class BackendKeyMissing(Exception):
    """A model's ``api_key: env:VAR`` names a variable that is unset: calling it would only measure 401s."""


@dataclass(frozen=True)
class Endpoint:
    """One model as the eval calls it: registry ``model``, the ``served_name`` sent as ``model``, its replicas."""

    model: str
    served_name: str
    urls: tuple[str, ...]
    authorization: str | None

    def url(self, attempt: int) -> str:
        """Replicas in turn, so retries of one case land on another replica when there is one."""
        return self.urls[attempt % len(self.urls)]


class SimBackends:
    """The ``sim://`` simulators a policy names, started for the duration of an eval run."""

    def __init__(self, profile: SimProfile) -> None:
        self._profile = profile
        self.servers: dict[str, SimServer] = {}

    async def start(self, spec: PolicySpec, models: Iterable[str]) -> None:
        served: dict[str, list[str]] = {}
        for name in models:
            model = spec.models[name]
            for url in model.backends:
                if url.startswith(SIM_SCHEME):
                    names = served.setdefault(url.removeprefix(SIM_SCHEME), [])
                    if spec.served_name(name) not in names:
                        names.append(spec.served_name(name))
        for sim_name, names in served.items():
            server = SimServer(names, self._profile)
            await server.start("127.0.0.1", 0)
            self.servers[sim_name] = server
            log.info("simulator sim://%s at %s serving %s", sim_name, server.url, names)

    async def stop(self) -> None:
        for server in self.servers.values():
            await server.stop()
        self.servers.clear()

    def resolve(self, url: str) -> str:
        if url.startswith(SIM_SCHEME):
            return self.servers[url.removeprefix(SIM_SCHEME)].url
        return url.rstrip("/")


def endpoint_for(spec: PolicySpec, name: str, sims: SimBackends) -> Endpoint:
    """``name``'s endpoint; raises :class:`BackendKeyMissing` when its backend key's variable is unset."""
    model = spec.models[name]
    authorization = None
    if model.api_key is not None:
        variable = model.api_key.removeprefix("env:")
        value = os.environ.get(variable)
        if not value:
            raise BackendKeyMissing(f"model '{name}': api_key {model.api_key} is unset or empty")
        authorization = f"Bearer {value}"
    urls = tuple(sims.resolve(url) for url in model.backends)
    return Endpoint(name, spec.served_name(name), urls, authorization)
