"""Chat and completions response bodies in exactly vLLM 0.32's shapes (key order, nulls), and ``/v1/models``.

A body has one choice per planned answer, ``index`` in order; ``usage.completion_tokens`` counts all choices.
``logprobs`` is null unless asked for; ``stop_reason`` names the stop string that ended a choice.
"""

from __future__ import annotations

import hashlib
from typing import Any

from gateway.sim.engine import Answer
from gateway.sim.logprobs import chat_logprobs, completion_logprobs


def fingerprint(seed: int) -> str:
    """A stable ``system_fingerprint`` in vLLM's ``vllm-<version>-<8 hex>`` form."""
    return "vllm-0.32.0-" + hashlib.sha256(str(seed).encode()).hexdigest()[:8]


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


def _chat_message(answer: Answer) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if answer.content_null else answer.text,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
    }
    call = answer.tool_call
    if call is not None:
        message["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        ]
    message["reasoning"] = None
    return message


def chat_body(cid: str, created: int, model: str, answers: list[Answer], prompt_tokens: int, fp: str) -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "message": _chat_message(answer),
            "logprobs": None if answer.logprobs is None else chat_logprobs(answer.logprobs),
            "finish_reason": answer.finish_reason,
            "stop_reason": answer.stop_reason,
            "token_ids": None,
            "routed_experts": None,
        }
        for i, answer in enumerate(answers)
    ]
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": fp,
        "usage": usage(prompt_tokens, sum(a.completion_tokens for a in answers)),
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "prompt_text": None,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }


def completion_body(
    cid: str, created: int, model: str, answers: list[Answer], prompt_tokens: int, fp: str
) -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "text": answer.text,
            "logprobs": None if answer.logprobs is None else completion_logprobs(answer.logprobs),
            "finish_reason": answer.finish_reason,
            "stop_reason": answer.stop_reason,
            "token_ids": None,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "routed_experts": None,
        }
        for i, answer in enumerate(answers)
    ]
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": fp,
        "usage": usage(prompt_tokens, sum(a.completion_tokens for a in answers)),
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }


def models_body(models: dict[str, int], created: int) -> dict[str, Any]:
    """``GET /v1/models``: each served name with its ``max_model_len``."""
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": name,
                "parent": None,
                "max_model_len": max_len,
                "permission": [
                    {
                        "id": "modelperm-" + hashlib.sha256(name.encode()).hexdigest()[:32],
                        "object": "model_permission",
                        "created": created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
            for name, max_len in models.items()
        ],
    }
