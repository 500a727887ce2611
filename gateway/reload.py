"""PolicyReloader: apply an edited policy without dropping a request, or keep the old one and say why.

Triggers: a change in the policy file's directory (watching the directory, not the file, catches editors that
save by rename and Kubernetes ConfigMap updates, which swap a ``..data`` symlink), SIGHUP, and
``POST /admin/policy/reload``. Every trigger runs the same checks as ``llm-gateway check``; a valid policy is
swapped in atomically (in-flight requests finish on the snapshot they started with), an invalid one is rejected
with its ``file:line:col`` errors, logged, counted and shown in ``GET /admin/policy``, and the old policy stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.policy import PolicyError, load_policy

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("gateway.reload")


@dataclass
class ReloadResult:
    outcome: str  # "loaded", "unchanged" or "rejected"
    trigger: str
    version: str
    at: float = field(default_factory=time.time)
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "outcome": self.outcome,
            "trigger": self.trigger,
            "version": self.version,
            "at": self.at,
            "errors": self.errors,
        }


class PolicyReloader:
    def __init__(self, gateway: Gateway, path: str, debounce_ms: int = 100) -> None:
        self._gateway = gateway
        self.path = Path(path)
        self._debounce_ms = debounce_ms
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.last: ReloadResult | None = None

    async def reload(self, trigger: str) -> ReloadResult:
        async with self._lock:  # one reload at a time; a burst of triggers applies the file's latest state
            current = self._gateway.snapshot.policy
            try:
                policy = load_policy(self.path)
            except PolicyError as exc:
                result = ReloadResult("rejected", trigger, current.version, errors=str(exc).splitlines())
                self._gateway.metrics.policy_reloads.labels("rejected").inc()
                log.error("policy reload (%s) rejected; keeping %s:\n%s", trigger, current.version, exc)
            else:
                if policy.digest == current.digest:
                    result = ReloadResult("unchanged", trigger, current.version)
                else:
                    await self._gateway.apply_policy(policy)
                    result = ReloadResult("loaded", trigger, policy.version)
                    self._gateway.metrics.policy_reloads.labels("loaded").inc()
                    log.warning("policy reloaded (%s): %s -> %s", trigger, current.version, policy.version)
            self.last = result
            return result

    def start(self, watch: bool = True) -> None:
        if watch:
            self._tasks.append(asyncio.create_task(self._watch(), name="policy-watch"))
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        self._tasks.append(asyncio.create_task(self._quiet_reload("sighup")))

    async def _quiet_reload(self, trigger: str) -> None:
        await self.reload(trigger)

    async def stop(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _watch(self) -> None:
        from watchfiles import awatch

        directory = self.path.resolve().parent if not self.path.is_symlink() else self.path.absolute().parent
        name = self.path.name
        async for changes in awatch(directory, debounce=self._debounce_ms, step=100, recursive=False):
            touched = {Path(p).name for _, p in changes}
            if name in touched or any(n.startswith("..") for n in touched):
                await self.reload("file")
