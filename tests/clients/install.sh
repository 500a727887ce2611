#!/usr/bin/env bash
# Create one client environment of `make test-clients`: install.sh VENV REQUIREMENTS. It is never the gateway's
# environment (the clients talk HTTP to a gateway run from .venv), and everything in it comes from REQUIREMENTS.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=$1
REQUIREMENTS=$2
PYTHON=${PYTHON:-python3}

# This machine's pip configuration lists local indexes that lack most packages: pip warns once per package.
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }

started=$(date +%s)
echo "== client environment $VENV: installing $(grep -v '^#' "$REQUIREMENTS" | xargs)"
mkdir -p "$(dirname "$VENV")"
test -f "$(dirname "$VENV")/.gitignore" || echo '*' > "$(dirname "$VENV")/.gitignore"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | quiet
"$VENV/bin/python" -m pip install -q -r "$REQUIREMENTS" 2>&1 | quiet
"$VENV/bin/python" -m pip check
touch "$VENV/.installed"
echo "== $VENV ready in $(( $(date +%s) - started ))s"
