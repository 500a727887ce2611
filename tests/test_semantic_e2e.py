"""``semantic`` cohorts in a running gateway, over real sockets with the official ``openai`` client: paraphrases
routed by meaning, header-decided requests that never wait for an embedding, an embedder killed or slow under
traffic costing a request at most the rule's budget and a counted fall-through, reloads refused when examples
cannot be embedded, a start with the embedder down, and ``explain`` (CLI and admin) and spans showing the scores."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.sim import SimServer
from gateway.telemetry.tracing import Tracing
from tests.harness import Stack, free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "semantic-admin"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
TIMEOUT_S = 0.2
SLACK_S = 0.8  # a loaded 2-core runner; an embedder that is waited for costs seconds (EMBED_DELAY_S)
EMBED_DELAY_S = 3.0
EXAMPLES = '["charged twice on my card", "refund my payment"]'
SEMANTIC = f"{{model: embedder, examples: {EXAMPLES}, threshold: 0.6, timeout_s: {TIMEOUT_S}}}"
POLICY = f"""
version: 1
models:
  chat-a: {{kind: base, backends: ["${{chat}}"]}}
  embedder: {{kind: embedding, backends: ["$EMBED"]}}
cohorts:
  - name: vip
    match: {{header: {{x-tier: vip}}}}
  - name: billing
    match:
      any:
        - {{content: "(?i)refund|invoice|chargeback"}}
        - {{semantic: {SEMANTIC}}}
  - name: shipping
    match: {{content: "(?i)parcel|delivery"}}
  - name: general
    default: true
routes:
  general: {{target: chat-a}}
health: {{interval_s: 0.2, unhealthy_after: 1, healthy_after: 1}}
"""
SIMS = {"chat": ["chat-a"], "emb": ["embedder"]}
BILLING_SCORE = (0.6, 1.0)  # "I was charged twice for my order ..." against the examples, simulator vectors


def policy(embedder: str = "${emb}", **replace: str) -> str:
    text = POLICY.replace("$EMBED", embedder)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


def paraphrase(i: int) -> str:
    """Billing questions with none of the regex's keywords; the simulator puts each at 0.63 to 0.73."""
    return f"I was charged twice for my order {i}"


def chat(stack: Stack, text: str, headers: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(
        model="chat-a", messages=[{"role": "user", "content": text}], max_tokens=4, extra_headers=headers or {}
    )
    assert raw.parse().choices[0].message.content is not None
    return raw.headers["x-gateway-cohort"], dict(raw.headers)


def cohort(stack: Stack, text: str, headers: dict[str, str] | None = None) -> str:
    return chat(stack, text, headers)[0]


def embeddings(stack: Stack, sim: str = "emb") -> int:
    return int(stack.stats(sim)["models"]["embedder"]["embeddings"])


def metric(stack: Stack, prefix: str) -> float:
    for line in httpx.get(f"{stack.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def fallthroughs(stack: Stack, reason: str, cohort: str = "billing") -> float:
    return metric(stack, f'llm_gateway_classifier_fallthrough_total{{cohort="{cohort}",reason="{reason}"}}')


def revive(stack: Stack, name: str, port: int) -> None:
    """A new embedding simulator on ``port`` (a pod that came up); the stack stops it at exit."""
    server = SimServer(["embedder"])
    stack.call(server.start("127.0.0.1", port))
    stack.sims[name] = server


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[Stack, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GATEWAY_ADMIN_TOKEN", TOKEN)
        with Stack(policy(), SIMS, tracing=Tracing(SimpleSpanProcessor(exporter))) as stack:
            yield stack, exporter


@pytest.fixture
def shared(traced: tuple[Stack, InMemorySpanExporter]) -> Stack:
    traced[0].reset()
    traced[1].clear()
    return traced[0]


@pytest.fixture
def own(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """A stack of its own, for tests that kill or slow the embedder."""
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", TOKEN)
    with Stack(policy(), SIMS) as stack:
        yield stack


def test_paraphrases_land_in_the_semantic_cohort_and_header_decided_requests_never_embed(shared: Stack) -> None:
    assert cohort(shared, paraphrase(1)) == "billing"
    assert cohort(shared, "they charged my card two times") == "billing"
    assert cohort(shared, "what is the weather in Paris") == "general"
    assert cohort(shared, "where is my parcel") == "shipping"
    assert embeddings(shared) == 4  # one call per distinct text: the examples were embedded at startup
    assert cohort(shared, paraphrase(1)) == "billing" and embeddings(shared) == 4  # cached by text digest
    shared.reset()
    assert cohort(shared, paraphrase(2), {"x-tier": "vip"}) == "vip"  # a header decides: no embedding
    assert cohort(shared, "I want a refund for my order") == "billing"  # the regex decides: no embedding
    assert embeddings(shared) == 0
    assert cohort(shared, paraphrase(2)) == "billing" and embeddings(shared) == 1  # the same text needs one now
    assert fallthroughs(shared, "timeout") == fallthroughs(shared, "unavailable") == 0


def test_spans_carry_the_cohort_score(traced: tuple[Stack, InMemorySpanExporter], shared: Stack) -> None:
    exporter = traced[1]
    chat(shared, paraphrase(3))
    chat(shared, "I want a refund")
    deadline = time.monotonic() + 5
    while len(exporter.get_finished_spans()) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    spans: list[ReadableSpan] = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    attempts = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert len(servers) == len(attempts) == 2
    semantic, regex = (dict(s.attributes or {}) for s in servers)
    score = semantic["gateway.cohort.score"]
    assert semantic["gateway.cohort"] == "billing" and isinstance(score, float)
    assert BILLING_SCORE[0] <= score < BILLING_SCORE[1]
    assert dict(attempts[0].attributes or {})["gateway.cohort.score"] == score
    assert regex["gateway.cohort"] == "billing" and "gateway.cohort.score" not in regex
    assert "gateway.cohort.score" not in dict(attempts[1].attributes or {})


def timed_cohorts(stack: Stack, texts: list[str]) -> list[tuple[str, float]]:
    """Each text's cohort and the client's latency, 8 at a time; every request must be answered."""

    def one(text: str) -> tuple[str, float]:
        started = time.monotonic()
        found = cohort(stack, text)
        return found, time.monotonic() - started

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, texts))


def test_a_killed_embedder_costs_requests_nothing_but_the_semantic_match(own: Stack) -> None:
    port = int(own.sim_url("emb").rsplit(":", 1)[1])
    assert cohort(own, paraphrase(10)) == "billing"
    own.kill_sim("emb")
    results = timed_cohorts(own, [paraphrase(i) for i in range(11, 31)] + ["where is my parcel"])
    assert [c for c, _ in results] == ["general"] * 20 + ["shipping"]
    assert max(latency for _, latency in results) < TIMEOUT_S + SLACK_S
    assert fallthroughs(own, "unavailable") >= 21
    assert cohort(own, paraphrase(10)) == "billing"  # its vector is cached: no embedder needed
    revive(own, "emb", port)
    assert own.wait_for(lambda: cohort(own, paraphrase(31)) == "billing", timeout=10)


def test_a_slow_embedder_falls_through_within_the_budget(own: Stack) -> None:
    own.configure("emb", {"set": {"ttft_s": EMBED_DELAY_S}})
    results = timed_cohorts(own, [paraphrase(i) for i in range(40, 56)])
    assert [c for c, _ in results] == ["general"] * 16
    assert max(latency for _, latency in results) < TIMEOUT_S + SLACK_S
    assert fallthroughs(own, "timeout") == 16
    own.configure("emb", {"reset_profile": True})
    assert cohort(own, paraphrase(56)) == "billing"
    assert fallthroughs(own, "timeout") == 16


def reload(stack: Stack, text: str) -> httpx.Response:
    stack.policy_path.write_text(text.replace("${chat}", stack.sim_url("chat")))
    return httpx.post(f"{stack.url}/admin/policy/reload", headers=ADMIN, timeout=30)


def test_a_reload_whose_examples_cannot_be_embedded_is_refused(own: Stack) -> None:
    version = chat(own, "hello")[1]["x-gateway-policy-version"]
    url = own.sim_url("emb")
    own.kill_sim("emb")
    new_examples = policy(url, **{"refund my payment": "refund my money"})
    answer = reload(own, new_examples)
    assert answer.status_code == 422
    message = answer.json()["error"]["message"]
    assert "the previous policy stays in force" in message
    assert "cohorts[1] billing (cohorts[1].match.any[1].semantic): cannot embed its examples (unavailable)" in message
    state = httpx.get(f"{own.url}/admin/policy", headers=ADMIN, timeout=5).json()
    assert state["version"] == version and state["last_reload"]["outcome"] == "rejected"
    assert any("cannot embed its examples" in e for e in state["last_reload"]["errors"])
    assert chat(own, paraphrase(60))[1]["x-gateway-policy-version"] == version
    assert metric(own, 'llm_gateway_policy_reloads_total{outcome="rejected"}') >= 1
    same_examples = policy(url, **{"routes:\n": "routes:\n  vip: {target: chat-a}\n"})
    answer = reload(own, same_examples)  # examples unchanged: their vectors are reused, no call is needed
    assert answer.status_code == 200, answer.text  # "unchanged" when the file watcher loaded it first
    assert httpx.get(f"{own.url}/admin/policy", headers=ADMIN, timeout=5).json()["version"] != version


def test_a_reload_naming_a_model_that_does_not_embed_is_refused_at_its_line(own: Stack) -> None:
    version = chat(own, "hello")[1]["x-gateway-policy-version"]
    answer = reload(own, policy(own.sim_url("emb"), **{"{model: embedder,": "{model: chat-a,"}))
    assert answer.status_code == 422
    message = answer.json()["error"]["message"]
    assert (
        f"{own.policy_path}:13:30: cohorts[1].match.any[1].semantic.model: 'chat-a' is kind: base; semantic needs"
        " a kind: embedding model" in message
    )
    assert chat(own, paraphrase(61))[1]["x-gateway-policy-version"] == version


def test_request_vectors_are_forgotten_when_the_embedding_model_changes(own: Stack) -> None:
    assert cohort(own, paraphrase(62)) == "billing"
    gateway = own.gateway
    assert gateway is not None and len(gateway.embedding_cache) == 1
    url = own.sim_url("emb")
    assert reload(own, policy(url, **{"routes:\n": "routes:\n  vip: {target: chat-a}\n"})).status_code == 200
    assert len(gateway.embedding_cache) == 1  # the same model: its vectors still hold
    changed = policy(url, **{'["' + url + '"]}': '["' + url + '"], max_connections: 64}'})
    assert reload(own, changed).status_code == 200
    assert own.wait_for(lambda: len(gateway.embedding_cache) == 0)  # (the file watcher may have loaded it first)
    assert cohort(own, paraphrase(62)) == "billing" and len(gateway.embedding_cache) == 1


def test_a_gateway_started_with_its_embedder_down_serves_then_turns_semantic_rules_on() -> None:
    port = free_port()
    with Stack(policy(f"http://127.0.0.1:{port}"), {"chat": ["chat-a"]}) as stack:
        started = time.monotonic()
        found, headers = chat(stack, paraphrase(70))
        assert found == "general"  # served at once, the semantic rule false
        assert time.monotonic() - started < TIMEOUT_S + SLACK_S
        assert fallthroughs(stack, "examples_unavailable") == 1
        revive(stack, "emb", port)
        assert stack.wait_for(lambda: cohort(stack, paraphrase(71)) == "billing", timeout=20)
        assert chat(stack, paraphrase(72))[1]["x-gateway-policy-version"] == headers["x-gateway-policy-version"]


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60, input=stdin, check=False)


def request_body(text: str) -> str:
    return json.dumps({"model": "chat-a", "messages": [{"role": "user", "content": text}]})


def test_explain_cli_shows_the_nearest_examples_and_the_threshold(tmp_path: Path) -> None:
    (tmp_path / "billing.txt").write_text("# billing\ncharged twice on my card\nrefund my payment\n")
    file_policy = policy("sim://emb", **{f"examples: {EXAMPLES}": "examples_file: billing.txt"})
    path = tmp_path / "policy.yaml"
    path.write_text(file_policy.replace("${chat}", "sim://chat"))
    shown = run_cli("explain", "--policy", str(path), "-", "--json", stdin=request_body(paraphrase(80)))
    assert shown.returncode == 0, shown.stderr
    result = json.loads(shown.stdout)
    assert result["cohort"] == "billing"
    [report] = result["semantic"]
    assert report["path"] == "cohorts[1].match.any[1].semantic" and report["threshold"] == 0.6
    assert report["held"] is True and report["reason"] is None
    assert [n["example"] for n in report["nearest"]] == ["charged twice on my card", "refund my payment"]
    assert BILLING_SCORE[0] <= report["similarity"] < BILLING_SCORE[1]
    assert report["nearest"][0]["similarity"] == pytest.approx(report["similarity"], abs=1e-6)
    assert result["rule"] == f"cohorts[1] billing: any[1]: semantic {report['similarity']:.3f}>=0.6"
    text = run_cli("explain", "--policy", str(path), "-", stdin=request_body(paraphrase(80)))
    assert text.returncode == 0, text.stderr
    assert f"{report['similarity']:.3f} >= 0.6, holds" in text.stdout
    assert f"{report['nearest'][1]['similarity']:.3f}  refund my payment" in text.stdout
    path.write_text(file_policy.replace("sim://emb", f"http://127.0.0.1:{free_port()}").replace("${chat}", "sim://c"))
    down = run_cli("explain", "--policy", str(path), "-", "--json", stdin=request_body(paraphrase(80)))
    assert down.returncode == 0, down.stderr
    assert "semantic rules taken as false" in down.stderr and "cannot embed its examples (unavailable)" in down.stderr
    result = json.loads(down.stdout)
    assert result["cohort"] == "general" and result["semantic"][0]["reason"] == "examples_unavailable"


def test_admin_explain_shows_the_nearest_examples(shared: Stack) -> None:
    body = json.loads(request_body("why was my card charged twice"))
    answer = httpx.post(f"{shared.url}/admin/explain", json=body, headers=ADMIN, timeout=10)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    [report] = result["semantic"]
    assert result["cohort"] == "billing" and report["held"] is True and report["threshold"] == 0.6
    assert report["nearest"][0]["example"] == "charged twice on my card" and report["nearest"][0]["similarity"] > 0.6
    assert fallthroughs(shared, "unavailable") == fallthroughs(shared, "timeout") == 0
    vip = httpx.post(f"{shared.url}/admin/explain", json=body, headers={**ADMIN, "x-tier": "vip"}, timeout=10).json()
    assert vip["cohort"] == "vip" and vip["semantic"][0]["held"] is True  # the report covers every semantic rule


def test_check_names_the_line_of_a_non_embedding_model_and_a_broken_examples_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    template = policy("http://127.0.0.1:9", **{f"examples: {EXAMPLES}": "examples_file: billing.txt"})
    template = template.replace("${chat}", "http://127.0.0.1:9")
    path.write_text(template.replace("{model: embedder,", "{model: chat-a,"))
    found = run_cli("check", str(path))
    assert found.returncode == 1
    lines = found.stderr.splitlines()
    assert lines[0] == (
        f"{path}:13:30: cohorts[1].match.any[1].semantic.model: 'chat-a' is kind: base; semantic needs a kind: "
        "embedding model"
    )
    assert lines[1].startswith(f"{path}:13:") and "cohorts[1].match.any[1].semantic.examples_file: " in lines[1]
    assert lines[1].endswith(f"{tmp_path / 'billing.txt'}: cannot read examples: No such file or directory")
    path.write_text(template.replace("{model: embedder,", "{model: embeder,"))
    (tmp_path / "billing.txt").write_text("fine\n" + "x" * 8193 + "\n")
    found = run_cli("check", str(path))
    assert found.returncode == 1
    assert "semantic.model: unknown model 'embeder' (did you mean 'embedder'?)" in found.stderr
    assert f"{tmp_path / 'billing.txt'}:2: example longer than 8192 characters" in found.stderr
    (tmp_path / "billing.txt").write_text("fine\n")
    path.write_text(template)
    assert run_cli("check", str(path)).returncode == 0
