"""Policies shared by the tests."""

from __future__ import annotations

ROLLOUT_POLICY = """
version: 1
revision: test
public_models: [support-assistant]
models:
  base:               {kind: base,   backends: ["${base}"], served_name: qwen2.5-7b-instruct}
  billing-specialist: {kind: source, backends: ["${billing}"], max_context: 8192}
  policy-specialist:  {kind: source, backends: ["${policy}"]}
  merged-v1:
    kind: merged
    sources: [billing-specialist, policy-specialist]
    backends: ["${merged_a}", "${merged_b}"]
cohorts:
  - name: tool_required
    match: {has_tools: true}
  - name: billing_refund
    match: {any: [{header: {x-topic: billing}}, {content: "(?i)refund|chargeback"}]}
  - name: policy_exception
    match: {metadata: {queue: policy}}
  - name: vip
    match: {user: [vip-1, vip-2]}
  - name: structured
    match: {response_format: [json_object, json_schema]}
  - name: long_prompt
    match: {min_prompt_chars: 2000}
  - name: direct_merged
    match: {model: merged-v1}
  - name: not_english
    match: {all: [{header: {x-lang: [de, fr]}}, {not: {metadata: {queue: policy}}}]}
  - name: out_of_domain
    default: true
routes:
  billing_refund:   {target: merged-v1, fallback: [billing-specialist, base]}
  policy_exception: {target: policy-specialist, fallback: [base]}
  tool_required:    {split: {merged-v1: 10, billing-specialist: 90}, sticky: user, fallback: [base]}
  vip:              {target: billing-specialist, fallback: [base]}
  structured:       {target: policy-specialist}
  long_prompt:      {target: billing-specialist}
  direct_merged:    {target: merged-v1, fallback: sources}
  not_english:      {target: policy-specialist}
  out_of_domain:    {target: base}
"""

ROLLOUT_SIMS = {
    "base": ["qwen2.5-7b-instruct"],
    "billing": ["billing-specialist"],
    "policy": ["policy-specialist"],
    "merged_a": ["merged-v1"],
    "merged_b": ["merged-v1"],
}


ONE_MODEL_POLICY = """
version: 1
public_models: [assistant]
models:
  tiny: {kind: source, backends: ["${sim}"]}
cohorts:
  - {name: chat, default: true}
routes:
  chat: {target: tiny}
"""
"""One model, ``tiny``, on the simulator ``sim``, serving every request (public name ``assistant``)."""
