"""EvidenceSync: eval outcomes, gate states and feedback records between this instance and the fleet's Redis.

One window per (model, cohort, evaluator) is a Redis list of the fleet's last ``window.size`` outcomes
(``"<ms>:<0|1>"``) and a counter of every outcome it ever had (the ``seen`` that gates measure "since the last
transition" with). Each sync appends the outcomes recorded here since the last one, then reads back the windows
that any instance changed and puts them in place of the local ones (with the outcomes recorded during the sync
appended), so every instance's gates judge the same evidence.

A gate's state is one JSON document with a ``version``. A decision made here is written only if the stored version
is still the one it was based on (else the fleet's state wins and is adopted); an operator's trip or reset is
written whatever the stored version. A gate the store lost (Redis restarted empty) is written again from the
instances' states, so a gate tripped during an outage is still tripped after it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.typing import EncodableT, FieldT

from gateway.evals.gates import GateState
from gateway.evals.recorder import EvalRecorder
from gateway.evals.windows import Key
from gateway.policy.schema import PolicySpec

Handler = Callable[[Any], None]
RECORDS_PER_SYNC = 5_000
"""Feedback records sent per sync (10,000 a second at the default sync): after an outage the backlog goes out over
several syncs rather than as one pipeline that would hold the event loop."""
WINDOW_KEEP_MS = 7 * 86_400_000
"""A window nobody wrote to for this long is dropped by Redis (its model or cohort is likely gone)."""


def window_field(key: Key) -> str:
    return json.dumps(list(key), separators=(",", ":"))


def gate_field(model: str, cohort: str) -> str:
    return json.dumps([model, cohort], separators=(",", ":"))


class EvidenceSync:
    def __init__(
        self,
        recorder: EvalRecorder,
        prefix: str,
        policy: Callable[[], PolicySpec],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._recorder = recorder
        self._prefix = prefix
        self._policy = policy
        self._wall = wall
        self._outcomes: dict[Key, deque[tuple[float, bool]]] = {}  # recorded here, not sent yet (wall time)
        self._counts: dict[Key, int] = {}  # how many (the deque keeps only the last window.size)
        self._dirty: dict[tuple[str, str], tuple[int, bool]] = {}  # gate → (version it derives from, by hand)
        self._answered: deque[tuple[str | None, str, str, str]] = deque(maxlen=recorder.spec.feedback_cache_size)
        self._scored: deque[tuple[str | None, str]] = deque(maxlen=10_000)
        self._fleet_seen: dict[str, int] = {}  # each window's counter as last read
        self._fleet_seen_now: dict[str, int] = {}
        recorder.windows.on_record = self._outcome
        recorder.gates.on_change = self._gate_changed
        recorder.feedback.on_remember = self._remember

    def _outcome(self, key: Key, failed: bool) -> None:
        pending = self._outcomes.get(key)
        if pending is None:
            pending = self._outcomes[key] = deque(maxlen=self._recorder.windows.size)
        pending.append((self._wall(), failed))
        self._counts[key] = self._counts.get(key, 0) + 1

    def _gate_changed(self, state: GateState, by_hand: bool) -> None:
        pair = (state.model, state.cohort)
        _, forced = self._dirty.get(pair, (state.version, False))
        self._dirty[pair] = (state.version, forced or by_hand)

    def _remember(self, key: str | None, request_id: str, model: str, cohort: str) -> None:
        self._answered.append((key, request_id, model, cohort))

    def scored(self, key: str | None, request_id: str) -> None:
        """A score claimed here while the fleet store had no record of the answer yet (or was down)."""
        self._scored.append((key, request_id))

    def feedback_field(self, key: str | None, request_id: str) -> str:
        """An answer's field in the record slices (the client key's name hashed, so names with any characters
        never collide)."""
        owner = "-" if key is None else hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
        return f"{owner}:{request_id}"

    def feedback_scored_key(self, key: str | None, request_id: str) -> str:
        return f"{self._prefix}:fb-scored:{self.feedback_field(key, request_id)}"

    def feedback_slices(self, now: float) -> list[str]:
        """The record slices an answer younger than ``feedback_ttl_s`` can be in, newest first."""
        ttl_s, width = self._recorder.spec.feedback_ttl_s, self._slice_s()
        newest = int(now // width)
        return [f"{self._prefix}:fb:{i}" for i in range(newest, int((now - ttl_s) // width) - 1, -1)]

    def _slice_s(self) -> float:
        """Answered requests are kept in one hash per slice of time (one write per sync, whatever the traffic);
        about 60 slices cover ``feedback_ttl_s``."""
        return max(60.0, self._recorder.spec.feedback_ttl_s / 60)

    def push(self, pipe: Pipeline, gate_write: AsyncScript) -> tuple[list[Handler | None], Callable[[], None]]:
        """Queue what changed here since the last sync; returns a handler per queued command (None: no answer
        to read) and an undo that puts it all back for the next sync if this one fails."""
        p, spec = self._prefix, self._recorder.spec
        outcomes, counts, self._outcomes, self._counts = self._outcomes, self._counts, {}, {}
        answered = [self._answered.popleft() for _ in range(min(len(self._answered), RECORDS_PER_SYNC))]
        scored = [self._scored.popleft() for _ in range(min(len(self._scored), RECORDS_PER_SYNC))]
        handlers: list[Handler | None] = []
        for key, entries in outcomes.items():
            name = f"{p}:win:{window_field(key)}"
            pipe.rpush(name, *[f"{int(t * 1000)}:{int(failed)}" for t, failed in entries])
            pipe.ltrim(name, -self._recorder.windows.size, -1)
            pipe.pexpire(name, WINDOW_KEEP_MS)
            pipe.hincrby(f"{p}:seen", window_field(key), counts[key])
            handlers += [None] * 4
        ttl_ms = int(spec.feedback_ttl_s * 1000)
        if answered:
            now = self._wall()
            at, width = int(now * 1000), self._slice_s()
            records: dict[FieldT, EncodableT] = {
                self.feedback_field(k, rid): f"{model}\x1f{cohort}\x1f{at}" for k, rid, model, cohort in answered
            }
            name = f"{p}:fb:{int(now // width)}"
            pipe.hset(name, mapping=records)
            pipe.pexpire(name, ttl_ms + int(width * 1000))
            handlers += [None, None]
        for key_name, request_id in scored:
            pipe.set(self.feedback_scored_key(key_name, request_id), "1", nx=True, px=ttl_ms)
            handlers.append(None)
        dirty, self._dirty = self._dirty, {}
        for (model, cohort), (version, forced) in dirty.items():
            state = self._recorder.gates.state(model, cohort)
            doc = asdict(state)
            for local_only in ("since", "version", "model", "cohort"):
                doc.pop(local_only)
            field, flag = gate_field(model, cohort), "1" if forced else "0"
            pipe.evalsha(gate_write.sha, 1, f"{p}:gates", field, version, json.dumps(doc), flag)
            handlers.append(self._written(model, cohort))

        def undo() -> None:
            for key, entries in outcomes.items():
                newer = self._outcomes.get(key, ())
                self._outcomes[key] = deque([*entries, *newer], maxlen=self._recorder.windows.size)
                self._counts[key] = self._counts.get(key, 0) + counts[key]
            self._answered.extendleft(reversed(answered))
            self._scored.extendleft(reversed(scored))
            for pair, value in dirty.items():
                self._dirty.setdefault(pair, value)

        return handlers, undo

    def _written(self, model: str, cohort: str) -> Handler:
        def adopt(stored: Any) -> None:
            if isinstance(stored, bytes) and (model, cohort) not in self._dirty:
                self._recorder.gates.adopt(_gate_state(model, cohort, stored))

        return adopt

    def pull(self, pipe: Pipeline) -> list[Handler | None]:
        """Queue the reads of the fleet's window counters and gate states."""
        p = self._prefix
        pipe.hgetall(f"{p}:seen")
        pipe.hgetall(f"{p}:gates")
        return [self._seen, self._gates]

    def _seen(self, stored: dict[bytes, bytes]) -> None:
        self._fleet_seen_now = {k.decode(): int(v) for k, v in stored.items()}

    def _gates(self, stored: dict[bytes, bytes]) -> None:
        gates = self._recorder.gates
        shared = {}
        for field, doc in stored.items():
            try:
                model, cohort = json.loads(field)
                shared[(model, cohort)] = _gate_state(model, cohort, doc)
            except (ValueError, TypeError, KeyError):
                continue
        for state in gates.states():
            pair = (state.model, state.cohort)
            if pair in self._dirty:
                continue
            fleet = shared.get(pair)
            if fleet is None:
                if state.tripped or state.version > 0:
                    self._dirty[pair] = (state.version, False)  # the store lost it: write it again
            elif fleet.version != state.version:
                gates.adopt(fleet)
        known = {(s.model, s.cohort) for s in gates.states()}
        for pair, fleet in shared.items():
            if pair not in known and pair not in self._dirty:
                gates.adopt(fleet)  # a gate this instance never touched (adopt ignores pairs no gate covers)

    def changed_windows(self, pipe: Pipeline) -> list[tuple[Key, int]]:
        """Queue reads of the windows whose fleet counter moved since the last sync; returns their keys."""
        spec = self._policy()
        models, cohorts = set(spec.models), {c.name for c in spec.cohorts}
        changed = []
        for field, seen in self._fleet_seen_now.items():
            if self._fleet_seen.get(field) == seen:
                continue
            try:
                model, cohort, evaluator = json.loads(field)
            except (ValueError, TypeError):
                continue
            if model not in models or cohort not in cohorts:
                continue
            pipe.lrange(f"{self._prefix}:win:{field}", 0, -1)
            changed.append(((model, cohort, evaluator), seen))
        return changed

    def apply_windows(self, changed: list[tuple[Key, int]], lists: list[list[bytes]]) -> None:
        """Put the fleet's windows in place (with the outcomes recorded here during the sync), then let the
        gates judge them."""
        now = self._wall()
        recorder = self._recorder
        for (key, seen), entries in zip(changed, lists, strict=True):
            outcomes = []
            for entry in entries:
                at, _, failed = entry.partition(b":")
                try:
                    outcomes.append((now - int(at) / 1000, failed == b"1"))
                except ValueError:
                    continue
            local = self._outcomes.get(key, ())
            outcomes += [(now - at, failed) for at, failed in local]
            window = recorder.windows.replace(key, outcomes, seen + self._counts.get(key, 0))
            recorder.metrics.eval_fail_rate.labels(*key).set(window.fail_rate())
            self._fleet_seen[window_field(key)] = seen
        for model, cohort in {(m, c) for (m, c, _), _ in changed}:
            recorder.gates.observe(model, cohort)


def _gate_state(model: str, cohort: str, doc: bytes) -> GateState:
    data = json.loads(doc)
    baseline = data.get("baseline") or {}
    return GateState(
        model,
        cohort,
        tripped=bool(data.get("tripped")),
        manual=bool(data.get("manual")),
        reason=str(data.get("reason", "")),
        baseline={str(k): int(v) for k, v in baseline.items()} if isinstance(baseline, dict) else {},
        tripped_by=str(data.get("tripped_by", "")),
        transitions=int(data.get("transitions", 0)),
        version=int(data.get("version", 0)),
    )
