#!/usr/bin/env bash
# `make test-clients`: the client compatibility suite, each client environment on its own test files, each run
# against a gateway it starts from .venv (`llm-gateway serve --policy routing_policies/local.yaml`, as `make run`).
# Arguments go to pytest (make test-clients CLIENTS_PYTEST_ARGS="-k langchain"). Fails if any environment fails.
set -uo pipefail
cd "$(dirname "$0")/../.."
VENV=${CLIENTS_VENV:-.venv-clients}
export LLM_GATEWAY_CLIENTS=1 LLM_GATEWAY_BIN=${LLM_GATEWAY_BIN:-$PWD/.venv/bin/llm-gateway}

failed=()
suite() {
    local env=$1
    shift
    local files=("${@/#/tests/clients/}")
    echo "== clients on $env ($("$VENV/$env/bin/python" -c 'import openai; print("openai", openai.__version__)'))"
    "$VENV/$env/bin/python" -m pytest -c tests/clients/pytest.ini -q --durations=5 "${files[@]}" "${PYTEST_ARGS[@]}"
    local rc=$?
    # 5: no test selected, fine when the arguments (-k ...) deselect a whole environment
    if [ "$rc" -ne 0 ] && { [ "$rc" -ne 5 ] || [ "${#PYTEST_ARGS[@]}" -eq 0 ]; }; then
        failed+=("$env")
    fi
}
PYTEST_ARGS=("$@")
suite openai3 test_openai_sdk.py test_openai_types.py test_langchain.py test_pydantic_ai.py test_openai_agents.py test_litellm.py
suite openai2 test_openai_sdk.py test_openai_types.py test_instructor.py test_llama_index.py
if [ "${#failed[@]}" -ne 0 ]; then
    echo "== client compatibility suite failed on: ${failed[*]}"
    exit 1
fi
echo "== client compatibility suite passed"
