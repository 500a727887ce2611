"""``llm-gateway explain`` without a running gateway: a policy's ``semantic`` examples embedded straight from its
embedding models (:class:`gateway.routing.embedders.DirectEmbedder`: ``sim://`` computed in process, http(s)
replicas called directly), as the gateway does when it loads the policy.

An embedding model that cannot be reached does not stop the explanation: the semantic rules are then false, as in a
gateway that started without its embedder, each is reported with ``reason: examples_unavailable``, and the caller
is handed the reason to print. The answer is still what a gateway would do with that policy now.
"""

from __future__ import annotations

from typing import Any

from gateway.policy.loader import LoadedPolicy
from gateway.routing.cohorts import CohortClassifier
from gateway.routing.embedders import DirectEmbedder
from gateway.routing.embedding import CachedEmbedder, EmbeddingCache
from gateway.routing.explain import explain, explain_async
from gateway.routing.planner import Planner
from gateway.routing.semantic import SemanticLoadError, prepare, semantic_rules


async def explain_offline(
    policy: LoadedPolicy, body: dict[str, Any], *, headers: dict[str, str], request_id: str
) -> tuple[dict[str, Any], str | None]:
    """The explanation, and why the semantic rules could not be evaluated (None when they could, or when the
    policy has none)."""
    spec = policy.spec
    planner = Planner(spec)
    if not semantic_rules(spec):
        return explain(spec, CohortClassifier(spec), planner, body, headers=headers, request_id=request_id), None
    async with DirectEmbedder(spec) as direct:
        try:
            rules, warning = await prepare(policy, direct), None
        except SemanticLoadError as exc:
            rules, warning = None, str(exc)
        classifier = CohortClassifier(spec, rules)
        embedder = CachedEmbedder(direct, EmbeddingCache(16))
        result = await explain_async(
            spec, classifier, planner, body, embedder=embedder, headers=headers, request_id=request_id
        )
    return result, warning
