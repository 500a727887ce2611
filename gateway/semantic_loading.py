"""A policy's ``semantic`` examples, embedded when the running gateway loads it (docs/semantic.md, "Loading").

Startup and reload differ on purpose. A reload whose examples cannot be embedded is refused with the reason, and
the gateway keeps the policy it has, which goes on classifying as before. At startup there is no policy to keep,
and an embedding model that is not up yet (a vLLM pod still loading its weights) must not keep the gateway from
serving: it serves at once with its semantic rules false (counted as ``examples_unavailable``), says so in the
log, and retries in the background (after 1 s, doubling up to every 30 s) until the examples are embedded; then
they are swapped in under the same policy version.

Examples go to backends of their own: fresh pools over the embedding models the policy's semantic rules name, on
the gateway's upstream client. Not the serving registry: building it updates in place the backends it keeps from
the previous one, which a refused reload must not do, and a retry should not wait for health checks to notice
that the model came up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from gateway.policy.loader import LoadedPolicy
from gateway.policy.schema import PolicySpec
from gateway.routing.embedders import GatewayEmbedder
from gateway.routing.semantic import PREPARE_TIMEOUT_S, SemanticLoadError, SemanticRules, prepare, semantic_rules
from gateway.upstream.client import UpstreamClient
from gateway.upstream.pool import BackendRegistry

log = logging.getLogger("gateway")

STARTUP_BUDGET_S = 10.0
"""How long startup waits for the examples before it serves without them (and goes on trying in the background)."""
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0

Ready = Callable[[LoadedPolicy, SemanticRules], None]
"""Told when a policy's examples are embedded; swaps them in if that policy is still the one in force."""


class SemanticLoader:
    def __init__(
        self,
        client: Callable[[], UpstreamClient],
        resolve: Callable[[str], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._resolve = resolve
        self._clock = clock
        self._retry: asyncio.Task[None] | None = None

    async def prepare(
        self, policy: LoadedPolicy, previous: SemanticRules | None = None, timeout_s: float = PREPARE_TIMEOUT_S
    ) -> SemanticRules | None:
        """``policy``'s examples embedded (None: it has no semantic rule); examples and model entries unchanged
        since ``previous`` cost no call. Raises :class:`SemanticLoadError` naming the rule and the reason."""
        spec = policy.spec
        names = {rule.spec.model for rule in semantic_rules(spec)}
        if not names:
            return None
        models = {name: model for name, model in spec.models.items() if name in names}
        own = spec.model_copy(update={"models": models})
        registry = BackendRegistry.from_policy(own, self._resolve, self._clock)
        return await prepare(
            policy, GatewayEmbedder(lambda: registry, self._client), previous=previous, timeout_s=timeout_s
        )

    async def activate(self, policy: LoadedPolicy, ready: Ready) -> None:
        """Startup: embed ``policy``'s examples within :data:`STARTUP_BUDGET_S`, else leave its semantic rules off
        and keep trying in the background."""
        try:
            async with asyncio.timeout(STARTUP_BUDGET_S):
                rules = await self.prepare(policy, timeout_s=STARTUP_BUDGET_S)
        except (SemanticLoadError, TimeoutError) as exc:
            why = str(exc) or f"no answer within {STARTUP_BUDGET_S:g}s"
            log.error(
                "policy %s: semantic rules are off (false for every request) until their examples can be embedded;"
                " retrying in the background: %s",
                policy.version,
                why,
            )
            self.stop_retrying()
            self._retry = asyncio.create_task(self._keep_trying(policy, ready, why), name="semantic-examples")
            return
        if rules is not None:
            ready(policy, rules)

    async def _keep_trying(self, policy: LoadedPolicy, ready: Ready, last: str) -> None:
        delay = RETRY_FIRST_S
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
            try:
                rules = await self.prepare(policy)
            except SemanticLoadError as exc:
                level = logging.DEBUG if str(exc) == last else logging.WARNING  # a new reason is worth a line
                log.log(level, "semantic examples still cannot be embedded (next try in %gs): %s", delay, exc)
                last = str(exc)
                continue
            except Exception:  # a bug must not end the retries silently
                log.exception("semantic examples: unexpected failure; retrying in %gs", delay)
                continue
            if rules is not None:
                ready(policy, rules)
            log.warning("policy %s: semantic examples embedded; semantic rules are on", policy.version)
            return

    def stop_retrying(self) -> None:
        """A newer policy is in force (its examples ready): the retry for the old one is moot."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    async def close(self) -> None:
        task, self._retry = self._retry, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @staticmethod
    def embedders_changed(old: PolicySpec, new: PolicySpec) -> bool:
        """An embedding model of ``old`` is gone or has another entry in ``new``: vectors cached under its name may
        come from a different model."""
        return any(new.models.get(name) != model for name, model in old.models.items() if model.kind == "embedding")
