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

check: lint typecheck test

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

# CI (CI=true, as root) installs the tools before `make test`, so those tests run there instead of skipping.
test: $(if $(CI),prometheus-tools)
