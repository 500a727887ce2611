"""``semantic`` cohort rules: examples embedded by a real simulator on a loopback port, requests classified by
nearest-example similarity, in three-valued logic so a request that other rules decide never waits, and an
embedder that is down, hung or erroring costing a request at most the rule's ``timeout_s`` and a fall-through."""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from gateway.policy import LoadedPolicy, load_policy, parse_policy
from gateway.policy.schema import Match, PolicySpec, SemanticSpec
from gateway.routing.cohorts import CohortClassifier, explain_match
from gateway.routing.embedders import DirectEmbedder, GatewayEmbedder
from gateway.routing.embedding import CachedEmbedder, EmbeddingCache
from gateway.routing.features import RequestFeatures
from gateway.routing.matchers import compile_tri
from gateway.routing.semantic import (
    DimensionMismatch,
    SemanticIndex,
    SemanticLoadError,
    SemanticRule,
    prepare,
    request_text,
)
from gateway.routing.semantic_eval import Evaluation, LeafOutcome, SemanticLeaf
from gateway.sim import ModelProfile, SimProfile, SimServer
from gateway.upstream.client import UpstreamClient
from gateway.upstream.pool import BackendRegistry

BILLING = ["charged twice on my card", "refund my payment"]
TIMEOUT_S = 0.2
SLACK_S = 0.3
RULE = "cohorts[1] billing (cohorts[1].match.any[1].semantic)"

POLICY = """
version: 1
models:
  base: {kind: base, backends: ["http://127.0.0.1:9"]}
  embedder: {kind: embedding, backends: ["$EMBED"]}
cohorts:
  - name: vip
    match: {header: {x-tier: vip}}
  - name: billing
    match:
      any:
        - {content: "(?i)refund|invoice|chargeback"}
        - {semantic: {model: embedder, $EXAMPLES, threshold: 0.6, timeout_s: $TIMEOUT}}
  - name: shipping
    match: {content: "(?i)parcel|delivery"}
  - name: general
    default: true
routes:
  general: {target: base}
"""


def policy_text(url: str, examples: str = f"examples: {BILLING}", cohorts: str | None = None) -> str:
    text = POLICY.replace("$EMBED", url).replace("$EXAMPLES", examples).replace("$TIMEOUT", str(TIMEOUT_S))
    if cohorts is not None:
        head, rest = text.split("cohorts:\n", 1)
        text = head + "cohorts:\n" + cohorts + "routes:" + rest.split("routes:", 1)[1]
    return text


def chat(text: str) -> dict[str, Any]:
    return {"model": "base", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]}


def features(text: str, headers: dict[str, str] | None = None) -> RequestFeatures:
    return RequestFeatures(chat(text), headers or {})


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = SimServer(["embedder"], SimProfile(default=ModelProfile(kind="embedding")))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    upstream = UpstreamClient()
    await upstream.start()
    yield upstream
    await upstream.close()


class Setup:
    """A policy's classifier with its examples prepared through the gateway's own upstream stack."""

    def __init__(self, spec: PolicySpec, client: UpstreamClient) -> None:
        self.spec = spec
        self.registry = BackendRegistry.from_policy(spec, lambda url: url)
        self.embedder = GatewayEmbedder(lambda: self.registry, lambda: client)
        self.cached = CachedEmbedder(self.embedder, EmbeddingCache(100))
        self.events: list[tuple[str, str]] = []
        self.classifier = CohortClassifier(spec)

    async def prepare(self) -> Setup:
        rules = await prepare(self.spec, self.embedder)
        self.classifier = CohortClassifier(self.spec, rules, lambda *event: self.events.append(event))
        return self

    async def cohort(self, text: str, headers: dict[str, str] | None = None) -> str:
        return (await self.classifier.classify_async(features(text, headers), self.cached)).cohort


def calls(sim: SimServer) -> int:
    return int(sim.stats()["models"]["embedder"]["embeddings"])


async def ready(sim: SimServer, client: UpstreamClient, **kw: str) -> Setup:
    return await Setup(parse_policy(policy_text(sim.url, **kw)).spec, client).prepare()


async def test_paraphrases_land_in_the_semantic_cohort(sim: SimServer, client: UpstreamClient) -> None:
    setup = await ready(sim, client)
    decision = await setup.classifier.classify_async(features("I was charged twice for my order"), setup.cached)
    assert (decision.cohort, decision.rule) == ("billing", "cohorts[1]")
    assert decision.score is not None and 0.6 <= decision.score < 1.0
    assert [(o.path, o.held, o.example) for o in decision.semantic] == [
        ("cohorts[1].match.any[1].semantic", True, "charged twice on my card")
    ]
    assert await setup.cohort("they charged my card two times") == "billing"
    assert await setup.cohort("what is the weather in Paris") == "general"
    assert await setup.cohort("where is my parcel") == "shipping"
    assert setup.events == []


async def test_a_request_other_rules_decide_never_waits_for_an_embedding(
    sim: SimServer, client: UpstreamClient
) -> None:
    setup = await ready(sim, client)
    before = calls(sim)
    vip = features("I was charged twice for my order", {"x-tier": "vip"})
    assert setup.classifier.classify(vip).cohort == "vip" and not setup.classifier.classify(vip).needs_embedding
    assert await setup.cohort("I was charged twice for my order", {"x-tier": "vip"}) == "vip"
    assert await setup.cohort("I need a refund") == "billing"  # any: the regex holds, the semantic is not needed
    assert calls(sim) == before
    combined = """  - name: billing
    match: {any: [{header: {x-topic: billing}}, {semantic: {model: embedder, examples: ["refund my payment"]}}]}
  - name: never
    match: {all: [{header: {x-never: "1"}}, {semantic: {model: embedder, examples: ["refund my payment"]}}]}
  - name: general
    default: true
"""
    setup = await Setup(parse_policy(policy_text(sim.url, cohorts=combined)).spec, client).prepare()
    before = calls(sim)
    assert await setup.cohort("what is the weather in Paris", {"x-topic": "billing"}) == "billing"
    assert calls(sim) == before
    assert await setup.cohort("what is the weather in Paris") == "general"  # now the semantic rule must be asked
    assert calls(sim) == before + 1


async def test_sync_classify_never_waits_and_says_when_it_would(sim: SimServer, client: UpstreamClient) -> None:
    setup = await ready(sim, client)
    before = calls(sim)
    decision = setup.classifier.classify(features("I was charged twice for my parcel"))
    assert (decision.cohort, decision.needs_embedding) == ("shipping", True)  # as with the embedder down
    assert calls(sim) == before and setup.events == []
    decision = await setup.classifier.classify_async(features("I was charged twice for my parcel"), setup.cached)
    assert (decision.cohort, decision.needs_embedding) == ("billing", False)


async def test_without_prepared_examples_semantic_rules_fall_through(sim: SimServer) -> None:
    events: list[tuple[str, str]] = []
    spec = parse_policy(policy_text(sim.url)).spec
    classifier = CohortClassifier(spec, on_fallthrough=lambda *event: events.append(event))
    assert classifier.has_semantic
    decision = classifier.classify(features("I was charged twice for my parcel"))
    assert (decision.cohort, decision.needs_embedding) == ("shipping", False)
    assert events == [("billing", "examples_unavailable")]
    assert calls(sim) == 0


@pytest.mark.parametrize(
    ("fault", "reason"),
    [({"hang_rate": 1.0}, "timeout"), ({"error_rate": 1.0}, "error")],
)
async def test_a_failing_embedder_costs_at_most_the_timeout(
    sim: SimServer, client: UpstreamClient, fault: dict[str, float], reason: str
) -> None:
    setup = await ready(sim, client)
    sim.configure({"set": fault})
    started = time.monotonic()
    assert await setup.cohort("I was charged twice for my parcel") == "shipping"
    assert time.monotonic() - started < TIMEOUT_S + SLACK_S
    assert setup.events == [("billing", reason)]
    sim.configure({"reset_profile": True})
    assert await setup.cohort("I was charged twice for my parcel") == "billing"
    assert setup.events == [("billing", reason)]


async def test_a_killed_embedder_falls_through_then_recovers(sim: SimServer, client: UpstreamClient) -> None:
    setup = await ready(sim, client)
    port = sim.port
    await sim.stop()
    started = time.monotonic()
    assert await setup.cohort("I was charged twice for my order") == "general"
    assert time.monotonic() - started < TIMEOUT_S + SLACK_S
    assert setup.events == [("billing", "unavailable")]
    revived = SimServer(["embedder"], SimProfile(default=ModelProfile(kind="embedding")))
    await revived.start("127.0.0.1", port)
    try:
        assert await setup.cohort("I was charged twice for my order") == "billing"
        assert calls(revived) == 1
    finally:
        await revived.stop()


async def test_a_repeated_text_costs_one_call(sim: SimServer, client: UpstreamClient) -> None:
    setup = await ready(sim, client)
    before = calls(sim)
    for _ in range(3):
        assert await setup.cohort("I was charged twice for my order") == "billing"
    assert calls(sim) == before + 1
    assert await setup.cohort("what is the weather in Paris") == "general"
    assert calls(sim) == before + 2 and len(setup.cached.cache) == 2


async def test_the_cache_is_bounded() -> None:
    cache = EmbeddingCache(max_entries=2)
    for text in ("a", "b", "c"):
        cache.put("m", text, np.ones(4, dtype=np.float32))
    assert (cache.get("m", "a"), len(cache)) == (None, 2)
    assert cache.get("m", "c") is not None and cache.get("other", "c") is None
    small = EmbeddingCache(max_entries=100, max_bytes=40)
    for text in ("a", "b", "c"):
        small.put("m", text, np.ones(4, dtype=np.float32))  # 16 bytes each
    assert len(small) == 2 and small.bytes == 32


async def test_explain_reports_the_nearest_examples(sim: SimServer, client: UpstreamClient) -> None:
    setup = await ready(sim, client)
    request = features("I was charged twice for my order")
    [report] = await setup.classifier.explain_semantic(request, setup.embedder)
    assert report["cohort"] == "billing" and report["threshold"] == 0.6 and report["held"] is True
    nearest = report["nearest"]
    assert isinstance(nearest, list) and [n["example"] for n in nearest] == BILLING
    assert nearest[0]["similarity"] > nearest[1]["similarity"] and report["similarity"] == pytest.approx(
        nearest[0]["similarity"], abs=1e-5
    )
    decision = await setup.classifier.classify_async(request, setup.cached)
    match = setup.spec.cohorts[1].match
    assert match is not None
    assert explain_match(match, request, decision) == [f"any[1]: semantic {decision.score:.3f}>=0.6"]
    assert explain_match(match, request) == []


async def test_examples_file_next_to_the_policy(sim: SimServer, tmp_path: Path) -> None:
    (tmp_path / "billing.txt").write_text("# billing questions\n\ncharged twice on my card\n  refund my payment  \n")
    loaded = write_policy(tmp_path, policy_text(sim.url, examples="examples_file: billing.txt"))
    async with DirectEmbedder(loaded.spec) as embedder:
        classifier = CohortClassifier(loaded.spec, await prepare(loaded, embedder))
        decision = await classifier.classify_async(features("I was charged twice for my order"), embedder)
    assert (decision.cohort, [o.example for o in decision.semantic]) == ("billing", ["charged twice on my card"])


def write_policy(directory: Path, text: str) -> LoadedPolicy:
    path = directory / "policy.yaml"
    path.write_text(text)
    return load_policy(path)


@pytest.mark.parametrize(
    ("content", "line", "why"),
    [
        (b"fine\n\n" + b"x" * 8193 + b"\n", 3, "longer than 8192 characters"),
        (b"# comment\n\xff\xfe\n", 2, "not UTF-8"),
        (b"e\n" * 10_001, 10_001, "more than 10000 examples"),
        (b"# only comments\n\n", None, "no examples"),
        (b"x" * (4 * 1024 * 1024 + 1), None, "larger than 4 MiB"),
    ],
)
async def test_examples_file_errors_name_the_file_and_line(
    tmp_path: Path, content: bytes, line: int | None, why: str
) -> None:
    (tmp_path / "ex.txt").write_text("fine\n")
    loaded = write_policy(tmp_path, policy_text("sim://emb", examples="examples_file: ex.txt"))
    (tmp_path / "ex.txt").write_bytes(content)  # changed after the policy was loaded (and checked)
    async with DirectEmbedder(loaded.spec) as embedder:
        with pytest.raises(SemanticLoadError) as raised:
            await prepare(loaded, embedder)
    where = f"{tmp_path / 'ex.txt'}:{line}:" if line is not None else f"{tmp_path / 'ex.txt'}:"
    assert str(raised.value).startswith(f"{RULE}: {where}") and why in str(raised.value)


async def test_an_unreadable_examples_file_is_refused(tmp_path: Path) -> None:
    for name, why in [("missing.txt", "cannot read examples"), ("fifo.txt", "not a regular file")]:
        (tmp_path / name).write_text("fine\n")
        loaded = write_policy(tmp_path, policy_text("sim://emb", examples=f"examples_file: {name}"))
        (tmp_path / name).unlink()  # gone, or a FIFO, after the policy was loaded (and checked)
        if name == "fifo.txt":
            os.mkfifo(tmp_path / name)
        with pytest.raises(SemanticLoadError, match=f"^{re.escape(RULE)}: .*{why}"):
            await prepare(loaded, DirectEmbedder(loaded.spec))


async def test_prepare_failure_names_the_rule(sim: SimServer, client: UpstreamClient) -> None:
    spec = parse_policy(policy_text(sim.url)).spec
    sim.configure({"set": {"error_rate": 1.0}})
    with pytest.raises(SemanticLoadError) as raised:
        await Setup(spec, client).prepare()
    assert str(raised.value).startswith(f"{RULE}: cannot embed its examples (error)")
    await sim.stop()
    with pytest.raises(SemanticLoadError, match=r"\(unavailable\)"):
        await Setup(spec, client).prepare()


async def test_a_dimension_mismatch_is_an_error_not_a_crash(sim: SimServer, client: UpstreamClient) -> None:
    index = SemanticIndex(["a", "b"], [[1.0, 0.0], [0.0, 2.0]])
    with pytest.raises(DimensionMismatch):
        index.nearest([1.0, 0.0, 0.0])
    setup = await ready(sim, client)
    sim.configure({"set": {"embedding_dim": 128}})  # the model behind the name changed
    assert await setup.cohort("I was charged twice for my order") == "general"
    assert setup.events == [("billing", "error")]


def test_nearest_examples_best_first() -> None:
    index = SemanticIndex(["x", "y", "xy"], [[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    assert [e for e, _ in index.nearest([2.0, 0.1], k=5)] == ["x", "xy", "y"]
    assert index.best([0.0, 1.0]) == ("y", pytest.approx(1.0))
    assert index.nearest([0.0, 0.0]) == [("x", 0.0), ("y", 0.0), ("xy", 0.0)]
    with pytest.raises(ValueError, match="zero"):
        SemanticIndex(["z"], [[0.0, 0.0]])


async def test_direct_embedder_computes_what_the_simulator_answers(sim: SimServer) -> None:
    texts = ["I was charged twice for my order", "refund my payment"]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim.url}/v1/embeddings", json={"model": "embedder", "input": texts}) as response:
            served = [d["embedding"] for d in (await response.json())["data"]]
    for url in ("sim://emb", sim.url):
        spec = parse_policy(policy_text(url)).spec
        async with DirectEmbedder(spec) as embedder:
            got = await embedder.embed("embedder", texts, 5.0)
        assert np.allclose(np.array(got), np.array(served), atol=1e-6)


def leaf_ids(match: Match) -> tuple[Any, list[SemanticLeaf]]:
    leaves: list[SemanticLeaf] = []

    def make_leaf(path: str, spec: SemanticSpec) -> SemanticLeaf:
        leaves.append(SemanticLeaf(len(leaves), SemanticRule("c", 0, path, spec), None))
        return leaves[-1]

    return compile_tri(match, "cohorts[0].match", make_leaf), leaves


SEM = {"semantic": {"model": "e", "examples": ["x"]}}
T, F, U = True, False, None


@pytest.mark.parametrize(
    ("match", "verdicts", "expected"),
    [
        ({"any": [SEM, SEM]}, [U, U], U),
        ({"any": [SEM, SEM]}, [F, U], U),
        ({"any": [SEM, SEM]}, [U, T], T),
        ({"any": [SEM, SEM]}, [F, F], F),
        ({"all": [SEM, SEM]}, [U, T], U),
        ({"all": [SEM, SEM]}, [U, F], F),
        ({"all": [SEM, SEM]}, [T, T], T),
        ({"not": SEM}, [U], U),
        ({"not": SEM}, [T], F),
        ({"not": {"any": [SEM, SEM]}}, [F, U], U),
        ({"not": {"all": [SEM, SEM]}}, [F, U], T),
        ({"any": [{"header": {"x-a": "1"}}, SEM]}, [U], T),
        ({"all": [{"header": {"x-b": "1"}}, SEM]}, [U], F),
        ({"header": {"x-a": "1"}, **SEM}, [U], U),  # two conditions of one mapping: both must hold
        ({"header": {"x-b": "1"}, **SEM}, [U], F),
    ],
)
def test_three_valued_logic(match: dict[str, Any], verdicts: list[bool | None], expected: bool | None) -> None:
    predicate, leaves = leaf_ids(Match.model_validate(match))
    request = RequestFeatures(chat("hi"), {"x-a": "1"})
    evaluation = Evaluation(request)
    evaluation.verdicts.update({leaf.id: v for leaf, v in zip(leaves, verdicts, strict=True) if v is not None})
    assert predicate(request, evaluation) is expected
    if expected is None:  # an unknown result names the leaves it waits for, and only unknown ones
        assert evaluation.wanted and all(leaf.id not in evaluation.verdicts for leaf in evaluation.wanted)


async def test_a_large_index_gives_the_same_answer(sim: SimServer, client: UpstreamClient) -> None:
    """4096 examples of 256 coordinates: scored in a worker thread, with the same result."""
    rng = np.random.default_rng(0)
    index = SemanticIndex([f"e{i}" for i in range(4096)], rng.normal(size=(4096, 256)))
    spec = SemanticSpec(model="embedder", examples=["x"], threshold=-1.0)
    leaf = SemanticLeaf(0, SemanticRule("c", 0, "cohorts[0].match.semantic", spec), index)
    setup = Setup(parse_policy(policy_text(sim.url)).spec, client)
    evaluation = Evaluation(features("I was charged twice for my order"))
    await evaluation.settle([leaf], setup.embedder)
    [vector] = await setup.embedder.embed("embedder", ["I was charged twice for my order"], 1.0)
    example, score = index.best(vector)
    assert evaluation.outcomes[0] == LeafOutcome(leaf.rule.path, "c", True, score, example, -1.0, None)


def test_what_each_text_mode_embeds() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": [{"type": "text", "text": "second question"}]},
        ],
    }
    request = RequestFeatures(body)
    assert request_text(request, "last_user") == "second question"
    assert request_text(request, "user") == "first question\nsecond question"
    assert request_text(request, "all") == "be brief\nfirst question\nan answer\nsecond question"
    prompt = RequestFeatures({"model": "m", "prompt": "  " + "p" * 10_000})
    assert [len(request_text(prompt, mode)) for mode in ("last_user", "user", "all")] == [8190] * 3
    assert request_text(RequestFeatures({"model": "m", "messages": [{"role": "system", "content": "x"}]}), "user") == ""


async def test_a_request_without_text_costs_no_call(sim: SimServer, client: UpstreamClient) -> None:
    setup = await ready(sim, client)
    before = calls(sim)
    body = {"model": "base", "messages": [{"role": "system", "content": "I was charged twice for my order"}]}
    decision = await setup.classifier.classify_async(RequestFeatures(body), setup.cached)
    assert decision.cohort == "general" and calls(sim) == before and setup.events == []
