"""One request's ``semantic`` conditions: which are known, which need the request's vector, and fetching it.

A semantic condition (a *leaf*) is unknown until the request's vector is known. :class:`Evaluation` holds one
request's verdicts; the classifier asks it to settle the leaves a rule is waiting on. Leaves that need no vector
are settled at once (no prepared examples: false, ``examples_unavailable``; no text to embed: false). The rest
share one fetch per (model, text); each leaf waits for it at most its own ``timeout_s`` from the fetch's start,
and a fetch that fails or is late makes the leaf false with the reason (``timeout``, ``error``, ``unavailable``).
Fetches still running when the request is classified are cancelled: nothing outlives the request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gateway.routing.embedding import CachedEmbedder, Embedder, EmbeddingUnavailable, Vector
from gateway.routing.features import RequestFeatures
from gateway.routing.semantic import SemanticIndex, SemanticRule, request_text

log = logging.getLogger("gateway.routing")

OFFLOAD_SIZE = 1 << 20
"""Coordinates (examples x dimension) past which similarities are computed in a worker thread: numpy releases the
GIL, and 10,000 examples of 1024 coordinates take milliseconds the event loop should not spend."""

FallthroughHook = Callable[[str, str], None]
"""(cohort, reason): a semantic condition of ``cohort`` was taken as false because its vector or examples could not
be had; reason is ``timeout``, ``error``, ``unavailable`` or ``examples_unavailable``."""


@dataclass(frozen=True)
class SemanticLeaf:
    """A compiled ``semantic`` condition: where it is, and its prepared examples (None: not prepared)."""

    id: int
    rule: SemanticRule
    index: SemanticIndex | None


@dataclass(frozen=True)
class LeafOutcome:
    """How a semantic condition came out for one request. ``score`` is the nearest example's similarity when the
    vector was had; ``reason`` says why it fell through (then ``held`` is false)."""

    path: str
    cohort: str
    held: bool
    score: float | None = None
    example: str | None = None
    threshold: float | None = None
    reason: str | None = None


@dataclass
class _Fetch:
    task: asyncio.Future[list[Vector]]
    started: float


class Evaluation:
    """The semantic state of one request's classification. Not shared between requests."""

    __slots__ = ("_fetches", "features", "outcomes", "verdicts", "wanted")

    def __init__(self, features: RequestFeatures) -> None:
        self.features = features
        self.verdicts: dict[int, bool] = {}
        self.outcomes: dict[int, LeafOutcome] = {}
        self.wanted: list[SemanticLeaf] = []  # leaves the last evaluated rule found unknown, in visiting order
        self._fetches: dict[tuple[str, str], _Fetch] = {}

    def leaf(self, leaf: SemanticLeaf) -> bool | None:
        """A leaf's value for the rule being evaluated; an unknown one is noted in :attr:`wanted`."""
        verdict = self.verdicts.get(leaf.id)
        if verdict is None:
            self.wanted.append(leaf)
        return verdict

    def settle_offline(self, leaves: Iterable[SemanticLeaf]) -> list[SemanticLeaf]:
        """Settle what needs no vector; the leaves that do are returned."""
        pending = []
        for leaf in leaves:
            if leaf.id in self.verdicts:
                continue
            if leaf.index is None:
                self._settle(leaf, False, reason="examples_unavailable")
            elif not request_text(self.features, leaf.rule.spec.text):
                self._settle(leaf, False)
            else:
                pending.append(leaf)
        return pending

    def assume_false(self, leaves: Iterable[SemanticLeaf]) -> None:
        """Take ``leaves`` as false without asking (a caller that cannot wait); nothing is reported."""
        for leaf in leaves:
            self.verdicts.setdefault(leaf.id, False)

    async def settle(self, leaves: Sequence[SemanticLeaf], embedder: Embedder) -> None:
        """Fetch the vectors ``leaves`` need (each distinct text once) and settle every one of them."""
        leaves = [leaf for leaf in leaves if leaf.id not in self.verdicts]
        loop = asyncio.get_running_loop()
        budgets: dict[tuple[str, str], float] = {}
        for leaf in leaves:
            key = (leaf.rule.spec.model, request_text(self.features, leaf.rule.spec.text))
            budgets[key] = max(budgets.get(key, 0.0), leaf.rule.spec.timeout_s)
        cached = embedder.cached if isinstance(embedder, CachedEmbedder) else None
        for key, budget in budgets.items():
            if key in self._fetches:
                continue
            known = cached(*key) if cached is not None else None
            if known is not None:  # a warm cache: an answered future, no task to schedule and wait for
                done: asyncio.Future[list[Vector]] = loop.create_future()
                done.set_result([known])
                self._fetches[key] = _Fetch(done, loop.time())
                continue
            task = asyncio.ensure_future(embedder.embed(key[0], [key[1]], budget))
            task.add_done_callback(_retrieve)
            self._fetches[key] = _Fetch(task, loop.time())
        for leaf in leaves:
            spec = leaf.rule.spec
            fetch = self._fetches[(spec.model, request_text(self.features, spec.text))]
            left = fetch.started + spec.timeout_s - loop.time()
            if not fetch.task.done() and left > 0:
                await asyncio.wait((fetch.task,), timeout=left)
            await self._score(leaf, fetch.task)

    async def _score(self, leaf: SemanticLeaf, task: asyncio.Future[list[Vector]]) -> None:
        if not task.done():
            self._settle(leaf, False, reason="timeout")
            return
        exc = task.exception() if not task.cancelled() else EmbeddingUnavailable("error", "cancelled")
        if isinstance(exc, EmbeddingUnavailable):
            self._settle(leaf, False, reason=exc.reason)
            return
        if exc is not None:
            log.warning("embedding for %s failed unexpectedly: %r", leaf.rule.name, exc)
            self._settle(leaf, False, reason="error")
            return
        index = leaf.index
        assert index is not None
        try:
            vector = task.result()[0]
            if index.matrix.size >= OFFLOAD_SIZE:
                example, score = await asyncio.to_thread(index.best, vector)
            else:
                example, score = index.best(vector)
        except (ValueError, IndexError) as error:  # a dimension mismatch: the model changed behind its name
            log.warning("embedding for %s unusable: %s", leaf.rule.name, error)
            self._settle(leaf, False, reason="error")
            return
        self._settle(leaf, score >= leaf.rule.spec.threshold, score=score, example=example)

    def _settle(
        self,
        leaf: SemanticLeaf,
        held: bool,
        *,
        reason: str | None = None,
        score: float | None = None,
        example: str | None = None,
    ) -> None:
        self.verdicts[leaf.id] = held
        rule = leaf.rule
        self.outcomes[leaf.id] = LeafOutcome(rule.path, rule.cohort, held, score, example, rule.spec.threshold, reason)

    def score_of(self, leaves: Iterable[SemanticLeaf]) -> float | None:
        """The best similarity among ``leaves`` that held: what decided a semantic match."""
        scores = [o.score for leaf in leaves if (o := self.outcomes.get(leaf.id)) and o.held and o.score is not None]
        return max(scores) if scores else None

    def report(self, hook: FallthroughHook | None) -> None:
        if hook is None:
            return
        for outcome in self.outcomes.values():
            if outcome.reason is not None:
                hook(outcome.cohort, outcome.reason)

    def close(self) -> None:
        for fetch in self._fetches.values():
            fetch.task.cancel()
        self._fetches.clear()


def _retrieve(task: asyncio.Task[list[Vector]]) -> None:
    """Mark a fetch's exception as seen, so a failure nobody waited for is not logged as lost."""
    if not task.cancelled():
        task.exception()


async def explain_leaves(
    leaves: Sequence[SemanticLeaf], features: RequestFeatures, embedder: Embedder, k: int = 3, timeout_s: float = 5.0
) -> list[dict[str, object]]:
    """Every semantic condition against this request, for ``explain``: the threshold, the ``k`` nearest examples
    with their similarities, and whether it holds (or why it could not be evaluated). Each distinct text is
    embedded once, with ``timeout_s`` (an operator waits longer than a request does)."""
    reports: list[dict[str, object]] = []
    vectors: dict[tuple[str, str], Vector | EmbeddingUnavailable] = {}
    for leaf in leaves:
        spec = leaf.rule.spec
        text = request_text(features, spec.text)
        report: dict[str, object] = {
            "cohort": leaf.rule.cohort,
            "path": leaf.rule.path,
            "model": spec.model,
            "text": spec.text,
            "threshold": spec.threshold,
            "held": False,
            "similarity": None,
            "nearest": [],
            "reason": None,
        }
        reports.append(report)
        if leaf.index is None:
            report["reason"] = "examples_unavailable"
            continue
        if not text:
            continue
        key = (spec.model, text)
        if key not in vectors:
            try:
                vectors[key] = (await embedder.embed(spec.model, [text], timeout_s))[0]
            except EmbeddingUnavailable as exc:
                vectors[key] = exc
        got = vectors[key]
        if isinstance(got, EmbeddingUnavailable):
            report["reason"] = got.reason
            continue
        try:
            nearest = leaf.index.nearest(got, k)
        except ValueError:
            report["reason"] = "error"
            continue
        best = nearest[0][1] if nearest else None
        report.update(
            held=best is not None and best >= spec.threshold,
            similarity=best,
            nearest=[{"example": example, "similarity": round(sim, 6)} for example, sim in nearest],
        )
    return reports
