"""A ``semantic`` cohort rule against the real vLLM pooling server: the gateway embeds the rule's examples and each
request's text through vLLM, and the similarity it acts on is the cosine of vLLM's own vectors.

The encoder has random weights, so its similarities say nothing about meaning: every text is within ~0.1 of every
other (0.92 to 0.96). What it does give exactly is identity: the examples themselves and copies that tokenize alike
(upper case: the tokenizer lower-cases) have similarity 1, and near-copies (a word or the full stop dropped) stay
above 0.99. The threshold is set between the near-copies' lowest similarity and the unrelated texts' highest, both
computed from vLLM's ``/v1/embeddings`` vectors before the gateway starts, so the test checks the rule decides by
the similarity vLLM's vectors give, and ``POST /admin/explain`` reports that similarity.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from tests.harness import Stack
from tests.vllm.conftest import ADMIN_TOKEN, render_policy
from tests.vllm.servers import VllmServer
from tests.vllm.test_gateway_vllm import PUBLIC, gateway_client

EXAMPLES = [
    "I would like a refund for the duplicate charge on my last invoice.",
    "A chargeback was opened on order 4411; the billing team will review it within five business days.",
]
NEAR_COPIES = [
    "I WOULD LIKE A REFUND FOR THE DUPLICATE CHARGE ON MY LAST INVOICE.",
    "I would like a refund for the duplicate charge on my last invoice",
    "I would like a refund for the duplicate charge on my invoice.",
]
UNRELATED = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello! How can I help you with your account today?",
]
POLICY = """
version: 1
revision: vllm-semantic
public_models: [support-assistant]
models:
  embedder:           {kind: embedding, backends: ["${embedder}"], max_context: 512}
  base:               {kind: base, backends: ["${sources}"], served_name: tiny-base, max_context: 1024}
  billing-specialist: {kind: source, backends: ["${sources}"], max_context: 1024}
cohorts:
  - name: refunds
    match:
      semantic: {model: embedder, examples: ${examples}, threshold: ${threshold}, timeout_s: 10}
  - {name: other, default: true}
routes:
  refunds: {target: billing-specialist}
  other:   {target: base}
health:
  interval_s: 2
  check_timeout_s: 10
  timeouts: {connect_s: 2, first_byte_s: 60, total_s: 120}
"""


@dataclass(frozen=True)
class Semantic:
    stack: Stack
    threshold: float
    similarity: dict[str, float]  # each text's cosine to its nearest example, from vLLM's vectors
    nearest: dict[str, str]


def vllm_vectors(server: VllmServer, texts: list[str]) -> np.ndarray:
    """Unit vectors from vLLM's own ``/v1/embeddings``, in input order."""
    body = {"model": "embedder", "input": texts, "encoding_format": "float"}
    answer = httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    rows = sorted(answer.json()["data"], key=lambda item: item["index"])
    matrix = np.array([row["embedding"] for row in rows], dtype=np.float64)
    unit: np.ndarray = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return unit


@pytest.fixture(scope="module")
def semantic(vllm_servers: dict[str, VllmServer]) -> Iterator[Semantic]:
    texts = [*EXAMPLES, *NEAR_COPIES, *UNRELATED]
    vectors = vllm_vectors(vllm_servers["embedder"], texts)
    scores = vectors @ vectors[: len(EXAMPLES)].T
    similarity = {text: float(row.max()) for text, row in zip(texts, scores, strict=True)}
    nearest = {text: EXAMPLES[int(row.argmax())] for text, row in zip(texts, scores, strict=True)}
    low = min(similarity[text] for text in [*EXAMPLES, *NEAR_COPIES])
    high = max(similarity[text] for text in UNRELATED)
    assert low - high > 0.005, f"near-copies ({low:.4f}) and unrelated texts ({high:.4f}) are not apart"
    threshold = round((low + high) / 2, 4)
    policy = render_policy(POLICY, vllm_servers, examples=json.dumps(EXAMPLES), threshold=str(threshold))
    previous = os.environ.get("GATEWAY_ADMIN_TOKEN")
    os.environ["GATEWAY_ADMIN_TOKEN"] = ADMIN_TOKEN
    try:
        with Stack(policy, {}) as stack:
            yield Semantic(stack, threshold, similarity, nearest)
    finally:
        if previous is None:
            os.environ.pop("GATEWAY_ADMIN_TOKEN", None)
        else:
            os.environ["GATEWAY_ADMIN_TOKEN"] = previous


CASES = [
    *((text, "refunds") for text in EXAMPLES),
    *((text, "refunds") for text in NEAR_COPIES),
    *((text, "other") for text in UNRELATED),
]


@pytest.mark.parametrize(("text", "cohort"), CASES, ids=[f"{c}-{i}" for i, (_, c) in enumerate(CASES)])
def test_a_request_is_classified_by_the_cosine_of_vllms_vectors(semantic: Semantic, text: str, cohort: str) -> None:
    assert (semantic.similarity[text] >= semantic.threshold) == (cohort == "refunds")
    raw = gateway_client(semantic.stack).chat.completions.with_raw_response.create(
        model=PUBLIC, messages=[{"role": "user", "content": text}], max_tokens=4, temperature=0
    )
    assert raw.headers["x-gateway-cohort"] == cohort
    assert raw.headers["x-gateway-model"] == ("billing-specialist" if cohort == "refunds" else "base")
    assert raw.parse().choices[0].message.content is not None

    explained = httpx.post(
        f"{semantic.stack.url}/admin/explain",
        json={"model": PUBLIC, "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=60,
    )
    assert explained.status_code == 200, explained.text
    report = explained.json()
    assert report["cohort"] == cohort
    (rule,) = report["semantic"]
    assert rule["cohort"] == "refunds" and rule["reason"] is None
    assert rule["threshold"] == semantic.threshold
    assert rule["similarity"] == pytest.approx(semantic.similarity[text], abs=1e-5)
    assert rule["held"] is (cohort == "refunds")
    assert rule["nearest"][0]["example"] == semantic.nearest[text]
    assert rule["nearest"][0]["similarity"] == pytest.approx(semantic.similarity[text], abs=1e-5)


def test_no_semantic_condition_fell_through(semantic: Semantic) -> None:
    """Every request above got its vector from vLLM within the rule's budget: none was taken as false."""
    gateway_client(semantic.stack).chat.completions.create(
        model=PUBLIC, messages=[{"role": "user", "content": UNRELATED[0]}], max_tokens=4, temperature=0
    )
    metrics = httpx.get(f"{semantic.stack.url}/metrics", timeout=10).text
    assert "llm_gateway_classifier_fallthrough_total{" not in metrics
