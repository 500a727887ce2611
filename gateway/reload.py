"""PolicyReloader: apply an edited policy without dropping a request, or keep the old one and say why.

Triggers: a change in the policy file's directory (watching the directory, not the file, catches editors that
save by rename and Kubernetes ConfigMap updates, which swap a ``..data`` symlink), SIGHUP, and
``POST /admin/policy/reload``. Every trigger runs the same checks as ``llm-gateway check``; a valid policy is
swapped in atomically (in-flight requests finish on the snapshot they started with), an invalid one is rejected
with its ``file:line:col`` errors, logged, counted and shown in ``GET /admin/policy``, and the old policy stays.
A valid policy whose ``semantic`` examples cannot be embedded (its embedding model is down, say) is rejected the
same way, with the rule and the reason.

The file is read, parsed and checked in a worker thread: a large policy costs the event loop nothing. A watch event
first compares the file's bytes with what was last seen (the policy in force, or the last rejected file), so
churn next to the policy (a log file, another ConfigMap key) neither reloads nor logs, and a broken file is
reported once, not on every event. No failure of any kind stops the watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.policy import LoadedPolicy, PolicyError
from gateway.policy.loader import parse_policy_bytes, policy_digest, read_policy_bytes
from gateway.routing.semantic import SemanticLoadError

log = logging.getLogger("gateway.reload")

CurrentPolicy = Callable[[], LoadedPolicy]
"""The policy in force now."""
ApplyPolicy = Callable[[LoadedPolicy], Awaitable[None]]
"""Swap a validated policy in (the gateway's ``apply_policy``)."""
CountOutcome = Callable[[str], None]
"""Count one reload by outcome (``loaded`` or ``rejected``)."""


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
    def __init__(
        self,
        path: str,
        current: CurrentPolicy,
        apply: ApplyPolicy,
        count: CountOutcome,
        *,
        debounce_ms: int = 100,
        watch_retry_s: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self._current = current
        self._apply = apply
        self._count = count
        self._debounce_ms = debounce_ms
        self._watch_retry_s = watch_retry_s
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._seen: str | None = None  # fingerprint of the file state last acted on; None: the policy in force
        self.last: ReloadResult | None = None

    async def reload(self, trigger: str) -> ReloadResult:
        """Read, check and apply the file whatever it holds; the answer for SIGHUP and the admin endpoint."""
        async with self._lock:  # one reload at a time; a burst of triggers applies the file's latest state
            return await self._reload(trigger, *await asyncio.to_thread(self._read))

    async def reload_if_changed(self, trigger: str) -> ReloadResult | None:
        """Like :meth:`reload`, but silent (None) when the file holds what was last seen: a watch event."""
        async with self._lock:
            fingerprint, found = await asyncio.to_thread(self._read)
            if fingerprint == (self._seen or self._current().digest):
                return None
            return await self._reload(trigger, fingerprint, found)

    def _read(self) -> tuple[str, bytes | PolicyError]:
        """The file's bytes and their digest, or why it cannot be read and that reason as its fingerprint."""
        try:
            data = read_policy_bytes(self.path)
        except PolicyError as exc:
            return str(exc), exc
        return policy_digest(data), data

    async def _reload(self, trigger: str, fingerprint: str, found: bytes | PolicyError) -> ReloadResult:
        current = self._current()
        self._seen = fingerprint
        try:
            if isinstance(found, PolicyError):
                raise found
            if fingerprint == current.digest:
                result = ReloadResult("unchanged", trigger, current.version)
            else:
                policy = await asyncio.to_thread(parse_policy_bytes, found, str(self.path))
                await self._apply(policy)
                result = ReloadResult("loaded", trigger, policy.version)
                self._count("loaded")
                log.warning("policy reloaded (%s): %s -> %s", trigger, current.version, policy.version)
        except Exception as exc:  # a PolicyError, or anything else: the old policy stays and the watcher lives on
            expected = isinstance(exc, PolicyError | SemanticLoadError)
            errors = self._reasons(exc) if expected else [f"{self.path}: reload failed: {exc!r}"]
            result = ReloadResult("rejected", trigger, current.version, errors=errors)
            self._count("rejected")
            log.error("policy reload (%s) rejected; keeping %s: %s", trigger, current.version, " | ".join(errors))
            if not expected:
                log.debug("policy reload failure", exc_info=True)
        self.last = result
        return result

    def _reasons(self, exc: Exception) -> list[str]:
        if isinstance(exc, SemanticLoadError):  # names the rule by its path in the policy
            return [f"{self.path}: {exc}"]
        return str(exc).splitlines()

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
        """Watch the policy's directory for good; if the watch itself fails (the directory was removed), say so
        once, start it again when it can, and catch up on what changed meanwhile."""
        from watchfiles import awatch

        failure = ""
        while True:
            directory = self.path.absolute().parent if self.path.is_symlink() else self.path.resolve().parent
            try:
                if failure:  # the file may have changed while nothing watched it
                    await self.reload_if_changed("file")
                async for changes in awatch(directory, debounce=self._debounce_ms, step=100, recursive=False):
                    failure = ""
                    if any(Path(p) == directory for _, p in changes) and not directory.is_dir():
                        raise FileNotFoundError(f"{directory} was removed")  # a watch on it would see nothing more
                    if self._concerns_policy({Path(p).name for _, p in changes}):
                        await self.reload_if_changed("file")
            except Exception as exc:
                if repr(exc) != failure:
                    log.error(
                        "policy watch on %s failed (%s); retrying every %s s", directory, exc, self._watch_retry_s
                    )
                failure = repr(exc)
            await asyncio.sleep(self._watch_retry_s)

    def _concerns_policy(self, touched: set[str]) -> bool:
        """The policy's own name, or a ``..``-name (a ConfigMap's ``..data`` swap); the digest decides the rest."""
        return self.path.name in touched or any(name.startswith("..") for name in touched)
