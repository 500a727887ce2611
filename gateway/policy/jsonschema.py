"""The JSON Schema of policy files, generated from the typed models so it never drifts from what the loader accepts.

Editors (VS Code's YAML extension, JetBrains) use it for completion and inline validation; it is committed as
``routing_policies/policy.schema.json`` and a test keeps that file equal to this output. Cross-references (a route
naming a model) are beyond JSON Schema: ``llm-gateway check`` remains the full validation.
"""

from __future__ import annotations

from typing import Any

from gateway.policy.schema import PolicySpec

SCHEMA_ID = "https://llm-gateway.dev/schemas/policy.schema.json"


def policy_json_schema() -> dict[str, Any]:
    schema = PolicySpec.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "llm-gateway routing policy",
    }
