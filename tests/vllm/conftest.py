"""Fixtures for the real-vLLM integration tests: two vLLM servers on CPU and the gateway in front of them.

These tests run only under ``make test-vllm``, which builds the vLLM environment and the models and sets
``LLM_GATEWAY_VLLM=1``; plain ``make test`` does not collect them. Once collected they never skip: a vLLM server
that does not start is an error of the run.

* server ``sources``: the base model as ``tiny-base`` plus the LoRA adapters ``billing-specialist`` and
  ``policy-specialist``, context 1024 tokens, its worker's OpenMP threads on the first core;
* server ``merged``: the merged checkpoint as ``merged-v1``, context 512 tokens, at most 2 sequences at a time (so
  a few long requests build a real waiting queue), the last core;
* server ``embedder``: the tiny BERT encoder as ``embedder`` on a pooling runner (``/v1/embeddings``), the first core.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.telemetry.tracing import Tracing
from tests.harness import Stack
from tests.vllm.servers import ServerSpec, VllmServer

if os.environ.get("LLM_GATEWAY_VLLM") != "1":
    collect_ignore_glob = ["test_*.py"]  # `make test` stays fast and needs no vLLM; `make test-vllm` sets it

ADMIN_TOKEN = "vllm-it-admin"
SOURCES_CONTEXT = 1024
MERGED_CONTEXT = 512
EMBEDDER_CONTEXT = 512

POLICY = """
version: 1
revision: vllm-it
public_models: [support-assistant, support-embeddings]
models:
  embedder:           {kind: embedding, backends: ["${embedder}"], max_context: 512}
  base:               {kind: base,   backends: ["${sources}"], served_name: tiny-base, max_context: 1024}
  billing-specialist: {kind: source, backends: ["${sources}"], max_context: 1024}
  policy-specialist:  {kind: source, backends: ["${sources}"], max_context: 1024}
  merged-v1:
    kind: merged
    sources: [billing-specialist, policy-specialist]
    backends: ["${merged}"]
    max_context: 512
cohorts:
  - {name: embeddings,       match: {model: [support-embeddings, embedder]}}
  - {name: tool_required,    match: {has_tools: true}}
  - {name: structured,       match: {response_format: json_object}}
  - {name: billing_dispute,  match: {header: {x-topic: dispute}}}
  - {name: billing_refund,   match: {any: [{header: {x-topic: billing}}, {content: "(?i)refund|chargeback"}]}}
  - {name: policy_review,    match: {metadata: {queue: review}}}
  - {name: policy_exception, match: {metadata: {queue: policy}}}
  - {name: out_of_domain,    default: true}
routes:
  embeddings:       {target: embedder}
  tool_required:    {target: merged-v1, fallback: [billing-specialist]}
  structured:       {target: merged-v1, fallback: [policy-specialist]}
  billing_dispute:  {target: billing-specialist, fallback: [base]}
  billing_refund:   {target: merged-v1, fallback: [billing-specialist, base]}
  policy_review:    {target: policy-specialist, fallback: [base]}
  policy_exception: {target: merged-v1, fallback: [policy-specialist, base]}
  out_of_domain:    {target: base}
health:
  interval_s: 2
  check_timeout_s: 10  # on 2 busy cores vLLM's front end may answer /health and /metrics seconds late
  scrape_load: true
  resend_on_disconnect: true  # a test stops a server with requests in flight: they are sent on to the sources
  breaker: {consecutive_failures: 3, open_s: 60}
  timeouts: {connect_s: 2, first_byte_s: 60, total_s: 120}
evals:
  window: {size: 100, min_samples: 10}
  gates:
    - models: [merged-v1]
      cohorts: [structured, billing_refund]
      evaluators: [json_valid]
      max_fail_rate: 0.3
      min_samples: 10
      probe_sample: 0
"""


LAST = "test_stopping_the_merged_server_moves_its_cohorts_to_their_sources"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The test that stops the merged server runs last: the servers are shared by the whole session."""
    items.sort(key=lambda item: item.name == LAST)


def required_path(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        pytest.fail(f"{variable} is not set: run these tests with `make test-vllm`")
    path = Path(value)
    if not path.exists():
        pytest.fail(f"{variable}={value} does not exist: run these tests with `make test-vllm`")
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return required_path("VLLM_MODELS")


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    return required_path("VLLM_PYTHON")


@pytest.fixture(scope="session")
def vllm_servers(
    request: pytest.FixtureRequest, models_dir: Path, vllm_python: Path
) -> Iterator[dict[str, VllmServer]]:
    run_dir = Path(os.environ.get("VLLM_RUN_DIR", ".cache/vllm/run")).resolve()
    cpus = sorted(os.sched_getaffinity(0))  # one core per server's worker: the first and the last we may use
    specs = [
        ServerSpec(
            name="sources",
            model=models_dir / "base",
            served_name="tiny-base",
            max_model_len=SOURCES_CONTEXT,
            cpus=str(cpus[0]),
            lora_modules={name: models_dir / name for name in ("billing-specialist", "policy-specialist")},
        ),
        ServerSpec(
            name="merged",
            model=models_dir / "merged-v1",
            served_name="merged-v1",
            max_model_len=MERGED_CONTEXT,
            cpus=str(cpus[-1]),
            max_num_seqs=2,
        ),
        ServerSpec(
            name="embedder",
            model=models_dir / "embedder",
            served_name="embedder",
            max_model_len=EMBEDDER_CONTEXT,
            cpus=str(cpus[0]),
            runner="pooling",
        ),
    ]
    servers = {spec.name: VllmServer(spec, vllm_python, run_dir) for spec in specs}
    report = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        """A line in the test log even while pytest captures output (CI shows the servers starting)."""
        if report is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                report.write_line(line)

    try:
        for server in servers.values():
            server.start()
            loras = ", LoRA " + ", ".join(server.spec.lora_modules) if server.spec.lora_modules else ""
            say(f"vLLM {server.spec.name}: starting {server.spec.served_name}{loras} on {server.url}")
        with ThreadPoolExecutor(len(servers)) as pool:
            ready = dict(zip(servers, pool.map(lambda s: s.wait_ready(), servers.values()), strict=True))
        for name, seconds in ready.items():
            say(f"vLLM {name}: healthy after {seconds:.1f}s")
        yield servers
    finally:
        for server in servers.values():
            server.stop()
        say("vLLM servers stopped")


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def render_policy(template: str, servers: dict[str, VllmServer], **extra: str) -> str:
    policy = string.Template(template).substitute({name: server.url for name, server in servers.items()}, **extra)
    assert "$" not in policy  # the harness substitutes once more
    return policy


@pytest.fixture(scope="session")
def gateway(vllm_servers: dict[str, VllmServer], span_exporter: InMemorySpanExporter) -> Iterator[Stack]:
    os.environ["GATEWAY_ADMIN_TOKEN"] = ADMIN_TOKEN
    tracing = Tracing(SimpleSpanProcessor(span_exporter))
    try:
        with Stack(render_policy(POLICY, vllm_servers), {}, tracing=tracing) as stack:
            yield stack
    finally:
        os.environ.pop("GATEWAY_ADMIN_TOKEN", None)


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    span_exporter.clear()
    return span_exporter
