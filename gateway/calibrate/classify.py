"""The labeled set classified by the policy, with any thresholds, each request embedded once.

:func:`embed_requests` embeds every text a semantic rule of the policy reads, in batches, before anything is
classified; :class:`Calibration` then classifies the whole set as many times as calibrating takes, each time with a
fresh :class:`CohortClassifier` over a copy of the policy whose thresholds differ, the same prepared examples
(:class:`ThresholdRules`) and the request vectors from memory (:class:`VectorTable`): nothing is embedded twice.
Offline there is no per-request budget, so the copies' ``timeout_s`` is an hour; a semantic condition that still
falls through (a vector missing from the table) is a bug of this module, raised, never a silent ``false``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.calibrate.labeled import LabeledRequest
from gateway.policy.schema import Match, PolicySpec, SemanticSpec
from gateway.routing.cohorts import CohortClassifier
from gateway.routing.embedding import Embedder, EmbeddingUnavailable, Vector
from gateway.routing.semantic import (
    BATCH_SIZE,
    PREPARE_TIMEOUT_S,
    SemanticIndex,
    SemanticRule,
    SemanticRules,
    match_path,
    request_text,
    semantic_rules,
)

OFFLINE_TIMEOUT_S = 3600.0
"""``timeout_s`` of every semantic condition while calibrating: vectors come from memory, nothing may time out."""


class VectorTable:
    """An :class:`Embedder` that answers from vectors computed beforehand, by (model, text)."""

    def __init__(self) -> None:
        self.vectors: dict[tuple[str, str], Vector] = {}

    async def embed(self, model: str, texts: Sequence[str], timeout_s: float) -> list[Vector]:
        missing = [text for text in texts if (model, text) not in self.vectors]
        if missing:
            raise EmbeddingUnavailable("error", f"calibrate: a text of model {model!r} was not embedded beforehand")
        return [self.vectors[(model, text)] for text in texts]


async def embed_requests(
    policy: PolicySpec, labeled: Sequence[LabeledRequest], embedder: Embedder, batch_size: int = BATCH_SIZE
) -> VectorTable:
    """Every distinct (model, text) the policy's semantic rules read in ``labeled``, embedded in batches of
    ``batch_size`` (at most :data:`PREPARE_TIMEOUT_S` each). Raises :class:`EmbeddingUnavailable` on failure."""
    wanted: dict[str, dict[str, None]] = {}
    for rule in semantic_rules(policy):
        texts = wanted.setdefault(rule.spec.model, {})
        for item in labeled:
            text = request_text(item.features, rule.spec.text)
            if text:
                texts[text] = None
    table = VectorTable()
    for model, texts in wanted.items():
        pending = list(texts)
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            got = await embedder.embed(model, batch, PREPARE_TIMEOUT_S)
            if len(got) != len(batch):
                sent = f"model {model!r}: {len(batch)} texts sent, {len(got)} vectors back"
                raise EmbeddingUnavailable("error", sent)
            table.vectors.update(((model, text), vector) for text, vector in zip(batch, got, strict=True))
    return table


class ThresholdRules(SemanticRules):
    """``prepared`` for copies of the policy whose semantic conditions differ from ``written`` (by path) only in
    ``threshold`` and ``timeout_s``: such a condition gets the index prepared for the written one."""

    def __init__(self, prepared: SemanticRules, written: Mapping[str, SemanticSpec]) -> None:
        super().__init__({})
        self._source = prepared
        self._written = dict(written)

    def index_for(self, path: str, spec: SemanticSpec) -> SemanticIndex | None:
        written = self._written.get(path)
        if written is None:
            return None
        if spec.model_copy(update={"threshold": written.threshold, "timeout_s": written.timeout_s}) != written:
            return None
        return self._source.index_for(path, written)

    def __len__(self) -> int:
        return len(self._source)


def with_thresholds(policy: PolicySpec, thresholds: Mapping[str, float], timeout_s: float | None = None) -> PolicySpec:
    """``policy`` with the semantic conditions at the paths of ``thresholds`` set to those thresholds (and, with
    ``timeout_s``, every semantic condition's budget set to it). Values are not validated: ±inf forces a rule."""

    def retune(match: Match, path: str) -> Match:
        update: dict[str, object] = {}
        if match.semantic is not None:
            changes: dict[str, float] = {} if timeout_s is None else {"timeout_s": timeout_s}
            if f"{path}.semantic" in thresholds:
                changes["threshold"] = thresholds[f"{path}.semantic"]
            if changes:
                update["semantic"] = match.semantic.model_copy(update=changes)
        for key in ("any", "all"):
            children = getattr(match, key)
            if children:
                update[key] = [retune(child, f"{path}.{key}[{i}]") for i, child in enumerate(children)]
        if match.not_ is not None:
            update["not_"] = retune(match.not_, f"{path}.not")
        return match.model_copy(update=update) if update else match

    cohorts = [
        cohort if cohort.match is None else cohort.model_copy(update={"match": retune(cohort.match, match_path(i))})
        for i, cohort in enumerate(policy.cohorts)
    ]
    return policy.model_copy(update={"cohorts": cohorts})


class Calibration:
    """The policy, its prepared examples and the labeled set's vectors: classify the set under any thresholds."""

    def __init__(
        self, policy: PolicySpec, prepared: SemanticRules, labeled: Sequence[LabeledRequest], vectors: VectorTable
    ) -> None:
        self.policy = policy
        self.rules = semantic_rules(policy)
        self.labeled = list(labeled)
        self._prepared = prepared
        self._vectors = vectors
        self._written = {rule.path: rule.spec for rule in self.rules}
        self.passes = 0
        """Classifications of the whole set so far."""

    @property
    def labels(self) -> list[str]:
        return [item.cohort for item in self.labeled]

    async def predict(self, thresholds: Mapping[str, float] | None = None) -> list[str]:
        """The cohort of every labeled request, in order, with the rules at ``thresholds`` (by path) and the others
        as written."""
        policy = with_thresholds(self.policy, thresholds or {}, OFFLINE_TIMEOUT_S)
        classifier = CohortClassifier(policy, ThresholdRules(self._prepared, self._written))
        predictions = []
        for item in self.labeled:
            decision = await classifier.classify_async(item.features, self._vectors)
            failed = [o for o in decision.semantic if o.reason is not None]
            if failed:
                raise RuntimeError(f"calibrate: {failed[0].path} fell through ({failed[0].reason}) on line {item.line}")
            predictions.append(decision.cohort)
        self.passes += 1
        return predictions

    def similarities(self, rule: SemanticRule) -> list[float | None]:
        """Each request's similarity to ``rule``'s nearest example (None: no text to compare, the rule never
        holds), computed as the classifier computes it."""
        index = self._prepared.index_for(rule.path, rule.spec)
        if index is None:
            raise RuntimeError(f"calibrate: {rule.name} was not prepared")
        found: list[float | None] = []
        for item in self.labeled:
            text = request_text(item.features, rule.spec.text)
            found.append(index.best(self._vectors.vectors[(rule.spec.model, text)])[1] if text else None)
        return found
