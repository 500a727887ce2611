#!/usr/bin/env bash
# `make test-vllm`: build the test models (cached by content), run tests/vllm against three real vLLM servers on CPU
# (two chat servers, one embedding server) with the gateway in front, and stop every server whatever happens.
# All it writes stays under .cache/vllm.
# Arguments go to pytest (make test-vllm VLLM_PYTEST_ARGS="-k balancing").
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CACHE=$ROOT/.cache/vllm
RUN=$CACHE/run
VLLM_PY=$ROOT/${VLLM_VENV:-.venv-vllm}/bin/python

# Caches and temporary files of torch, Hugging Face, vLLM and the tests: in the project, not in $HOME or /tmp.
rm -rf "$RUN"
export TMPDIR=$RUN/tmp XDG_CACHE_HOME=$RUN/xdg-cache XDG_CONFIG_HOME=$RUN/xdg-config MPLCONFIGDIR=$RUN/matplotlib
export HF_HOME=$RUN/hf HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
mkdir -p "$TMPDIR" "$XDG_CACHE_HOME" "$XDG_CONFIG_HOME" "$MPLCONFIGDIR" "$HF_HOME"

started=$(date +%s)
models=$("$VLLM_PY" tests/vllm/build_models.py build --out "$CACHE/models")
echo "== models ready in $(( $(date +%s) - started ))s: $models"

export LLM_GATEWAY_VLLM=1 VLLM_PYTHON=$VLLM_PY VLLM_MODELS=$models VLLM_RUN_DIR=$RUN
# The fixtures stop the servers; this also stops any that a killed run left behind.
trap '"$ROOT/.venv/bin/python" -m tests.vllm.servers stop "$RUN"' EXIT
tests_started=$(date +%s)
"$ROOT/.venv/bin/python" -m pytest tests/vllm -v --durations=8 "$@"
echo "== vLLM integration tests done in $(( $(date +%s) - tests_started ))s (logs: ${RUN#"$ROOT"/}/logs)"
