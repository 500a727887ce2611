"""``semantic`` cohort rules, compiled: each rule's examples embedded once into a normalised matrix.

:func:`prepare` runs when a policy is loaded (startup, reload, offline commands): it reads every rule's examples
(inline or ``examples_file``), embeds them in batches through an :class:`Embedder` and returns
:class:`SemanticRules`, one :class:`SemanticIndex` per rule keyed by the rule's path in the policy
(``cohorts[2].match.any[1].semantic``). Any failure is a :class:`SemanticLoadError` naming the rule, so a reload
can be refused with it. At request time an index is a matrix-vector product: the nearest example's cosine
similarity to the request's vector, compared with the rule's ``threshold`` (docs/semantic.md).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from gateway.policy.loader import LoadedPolicy
from gateway.policy.schema import Match, ModelSpec, PolicySpec, SemanticSpec
from gateway.routing.embedding import Embedder, EmbeddingUnavailable, Vector
from gateway.routing.examples import ExamplesError, load_examples
from gateway.routing.features import RequestFeatures

MAX_TEXT_CHARS = 8192
"""A request's text is cut to its first this many characters before it is embedded (bounded work upstream)."""
BATCH_SIZE = 256
"""Examples per ``/v1/embeddings`` call while preparing."""
PREPARE_TIMEOUT_S = 60.0
"""Budget of each of those calls: loading is not on a request's path, and a cold vLLM may take a while."""


class DimensionMismatch(ValueError):
    """A vector whose length is not the index's (the embedding model changed behind its name, say)."""


class SemanticLoadError(Exception):
    """A ``semantic`` rule that could not be prepared; the message names the cohort, the rule's path and why."""


def request_text(features: RequestFeatures, mode: str) -> str:
    """What a rule with ``text: mode`` embeds: the last user message, every user message, or every message; cut
    to :data:`MAX_TEXT_CHARS` and stripped (an empty result means there is nothing to compare)."""
    if mode == "last_user":
        text = features.last_user_text
    elif mode == "user":
        text = features.user_text
    else:
        text = features.all_text
    return text[:MAX_TEXT_CHARS].strip()


class SemanticIndex:
    """A rule's examples and their unit vectors, one row each (float32, read-only)."""

    def __init__(self, examples: Sequence[str], vectors: ArrayLike) -> None:
        try:
            matrix = np.array(vectors, dtype=np.float32)
        except ValueError:
            raise ValueError("example vectors of different lengths") from None
        if matrix.ndim != 2 or matrix.shape[0] != len(examples) or matrix.shape[0] == 0 or matrix.shape[1] == 0:
            raise ValueError(f"{len(examples)} examples but vectors of shape {matrix.shape}")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise ValueError("an example's vector is zero or not finite")
        matrix /= norms
        matrix.setflags(write=False)
        self.examples = tuple(examples)
        self.matrix = matrix

    @property
    def dimension(self) -> int:
        return int(self.matrix.shape[1])

    def similarities(self, vector: ArrayLike) -> Vector:
        """Cosine similarity of ``vector`` to every example, in example order."""
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dimension:
            raise DimensionMismatch(f"a {query.shape[0]}-dimensional vector for a {self.dimension}-dimensional index")
        norm = float(np.linalg.norm(query))
        if not np.isfinite(norm):
            raise ValueError("the request's vector is not finite")
        if norm == 0.0:
            return np.zeros(len(self.examples), dtype=np.float32)
        result: Vector = self.matrix @ (query / norm)
        return result

    def nearest(self, vector: ArrayLike, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most similar examples, best first, with their similarities."""
        sims = self.similarities(vector)
        k = max(0, min(k, len(sims)))
        if k == 0:
            return []
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(self.examples[i], float(sims[i])) for i in top]

    def best(self, vector: ArrayLike) -> tuple[str, float]:
        sims = self.similarities(vector)
        i = int(np.argmax(sims))
        return self.examples[i], float(sims[i])


@dataclass(frozen=True)
class SemanticRule:
    """Where a ``semantic`` condition sits: ``cohort`` (its name), ``index`` (its position) and ``path``."""

    cohort: str
    index: int
    path: str
    spec: SemanticSpec

    @property
    def name(self) -> str:
        """How errors and reports name it: ``cohorts[2] billing (cohorts[2].match.any[1].semantic)``."""
        return f"cohorts[{self.index}] {self.cohort} ({self.path})"


def match_path(index: int) -> str:
    return f"cohorts[{index}].match"


def child_paths(match: Match, path: str) -> Iterator[tuple[Match, str]]:
    """The sub-matches of ``match`` with their paths, in the order the policy writes keys of the schema."""
    for key in ("any", "all"):
        for i, child in enumerate(getattr(match, key) or ()):
            yield child, f"{path}.{key}[{i}]"
    if match.not_ is not None:
        yield match.not_, f"{path}.not"


def semantic_rules(policy: PolicySpec) -> list[SemanticRule]:
    """Every ``semantic`` condition of the policy, in cohort order."""
    found: list[SemanticRule] = []

    def walk(cohort: str, index: int, match: Match, path: str) -> None:
        if match.semantic is not None:
            found.append(SemanticRule(cohort, index, f"{path}.semantic", match.semantic))
        for child, child_path in child_paths(match, path):
            walk(cohort, index, child, child_path)

    for i, cohort in enumerate(policy.cohorts):
        if cohort.match is not None:
            walk(cohort.name, i, cohort.match, match_path(i))
    return found


@dataclass(frozen=True)
class _Prepared:
    spec: SemanticSpec
    model: ModelSpec
    digest: bytes  # of the example texts
    index: SemanticIndex


class SemanticRules:
    """The prepared indexes of a policy, by rule path. Immutable; a classifier reads it, a reload builds another."""

    def __init__(self, prepared: Mapping[str, _Prepared]) -> None:
        self._prepared = dict(prepared)

    def index_for(self, path: str, spec: SemanticSpec) -> SemanticIndex | None:
        """The index of the rule at ``path``, if it was prepared from this very ``spec``."""
        entry = self._prepared.get(path)
        return entry.index if entry is not None and entry.spec == spec else None

    def __len__(self) -> int:
        return len(self._prepared)

    def _reusable(self, model: ModelSpec, digest: bytes) -> SemanticIndex | None:
        return next((p.index for p in self._prepared.values() if p.model == model and p.digest == digest), None)


async def prepare(
    policy: LoadedPolicy | PolicySpec,
    embedder: Embedder,
    base_dir: str | Path | None = None,
    *,
    previous: SemanticRules | None = None,
    batch_size: int = BATCH_SIZE,
    timeout_s: float = PREPARE_TIMEOUT_S,
) -> SemanticRules:
    """Embed every ``semantic`` rule's examples. ``base_dir`` (for ``examples_file``) defaults to the loaded
    policy's directory, else the working directory. A rule whose model entry and examples are unchanged since
    ``previous`` keeps its index without a call. Raises :class:`SemanticLoadError` for the first rule that fails."""
    if isinstance(policy, LoadedPolicy):
        spec, base = policy.spec, Path(policy.path).parent if base_dir is None else Path(base_dir)
    else:
        spec, base = policy, Path(base_dir) if base_dir is not None else Path.cwd()
    prepared: dict[str, _Prepared] = {}
    vectors: dict[tuple[str, str], Vector] = {}  # shared by rules that name the same model and texts
    for rule in semantic_rules(spec):
        model = spec.models.get(rule.spec.model)
        if model is None or model.kind != "embedding":
            raise SemanticLoadError(f"{rule.name}: model {rule.spec.model!r} is not a kind: embedding model")
        try:
            examples = await asyncio.to_thread(load_examples, rule.spec, base)
        except ExamplesError as exc:
            raise SemanticLoadError(f"{rule.name}: {exc}") from None
        digest = _digest(examples)
        index = previous._reusable(model, digest) if previous is not None else None
        if index is None:
            index = await _embed_examples(rule, examples, embedder, vectors, batch_size, timeout_s)
        prepared[rule.path] = _Prepared(rule.spec, model, digest, index)
    return SemanticRules(prepared)


async def _embed_examples(
    rule: SemanticRule,
    examples: list[str],
    embedder: Embedder,
    known: dict[tuple[str, str], Vector],
    batch_size: int,
    timeout_s: float,
) -> SemanticIndex:
    model = rule.spec.model
    missing = list(dict.fromkeys(t for t in examples if (model, t) not in known))
    for start in range(0, len(missing), batch_size):
        batch = missing[start : start + batch_size]
        try:
            got = await embedder.embed(model, batch, timeout_s)
        except EmbeddingUnavailable as exc:
            raise SemanticLoadError(f"{rule.name}: cannot embed its examples ({exc.reason}): {exc}") from None
        if len(got) != len(batch):
            raise SemanticLoadError(f"{rule.name}: {len(batch)} examples sent, {len(got)} vectors back")
        known.update(((model, text), vector) for text, vector in zip(batch, got, strict=True))
    try:  # normalising 10,000 rows is worth a thread
        return await asyncio.to_thread(SemanticIndex, examples, [known[(model, text)] for text in examples])
    except ValueError as exc:
        raise SemanticLoadError(f"{rule.name}: {exc}") from None


def _digest(examples: Sequence[str]) -> bytes:
    hasher = hashlib.blake2b(digest_size=16)
    for text in examples:
        hasher.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return hasher.digest()
