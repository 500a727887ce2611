"""Response bodies and SSE frames in exactly vLLM 0.32's shapes (key order, nulls, framing).

Stream frames come out of generators as ready-to-write bytes, each tagged with whether it carries generated
tokens: the server paces those (per-token delay) and counts them for ``stream_cut_after``. Chat streams start
with a ``delta.role`` chunk, put ``finish_reason`` on the last content chunk (tool streams on a trailing
``delta: {}`` chunk), add a ``"choices": []`` usage chunk only when asked, and end with ``data: [DONE]``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from gateway.sim.engine import Answer
from gateway.wire import SSE_DONE, sse_event

Frame = tuple[bytes, bool]
"""An SSE frame and whether it carries generated tokens."""


def fingerprint(seed: int) -> str:
    """A stable ``system_fingerprint`` in vLLM's ``vllm-<version>-<8 hex>`` form."""
    return "vllm-0.32.0-" + hashlib.sha256(str(seed).encode()).hexdigest()[:8]


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


def chat_body(cid: str, created: int, model: str, answer: Answer, prompt_tokens: int, fp: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if answer.content_null else "".join(answer.pieces),
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
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": answer.finish_reason,
        "stop_reason": None,
        "token_ids": None,
        "routed_experts": None,
    }
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": fp,
        "usage": _usage(prompt_tokens, answer.completion_tokens),
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "prompt_text": None,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }


def completion_body(cid: str, created: int, model: str, answer: Answer, prompt_tokens: int, fp: str) -> dict[str, Any]:
    choice = {
        "index": 0,
        "text": "".join(answer.pieces),
        "logprobs": None,
        "finish_reason": answer.finish_reason,
        "stop_reason": None,
        "token_ids": None,
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "routed_experts": None,
    }
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": fp,
        "usage": _usage(prompt_tokens, answer.completion_tokens),
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }


def _usage_frame(head: dict[str, Any], prompt: int, completion: int, fp: str) -> bytes:
    usage = {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}
    return sse_event({**head, "choices": [], "usage": usage, "system_fingerprint": fp})


def _chat_delta(head: dict[str, Any], delta: dict[str, Any], finish: str | None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    if finish is not None:
        choice["stop_reason"] = None
    choice["token_ids"] = None
    return sse_event({**head, "choices": [choice]})


def chat_stream(
    cid: str, created: int, model: str, answer: Answer, prompt_tokens: int, include_usage: bool, fp: str
) -> Iterator[Frame]:
    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    yield sse_event({**head, "choices": [role], "prompt_token_ids": None, "prompt_text": None}), False
    call = answer.tool_call
    if call is not None:
        header = {"id": call.id, "type": "function", "index": 0, "function": {"name": call.name}}
        yield _chat_delta(head, {"content": None, "tool_calls": [header]}, None), True
        for piece in call.argument_pieces:
            fragment = {"index": 0, "function": {"arguments": piece}}
            yield _chat_delta(head, {"content": None, "tool_calls": [fragment]}, None), True
        yield _chat_delta(head, {}, answer.finish_reason), False
    else:
        pieces = answer.pieces or [""]
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            yield _chat_delta(head, {"content": piece}, answer.finish_reason if i == last else None), True
    if include_usage:
        yield _usage_frame(head, prompt_tokens, answer.completion_tokens, fp), False
    yield SSE_DONE, False


def completion_stream(
    cid: str, created: int, model: str, answer: Answer, prompt_tokens: int, include_usage: bool, fp: str
) -> Iterator[Frame]:
    head = {"id": cid, "object": "text_completion", "created": created, "model": model}
    pieces = answer.pieces or [""]
    last = len(pieces) - 1
    for i, piece in enumerate(pieces):
        choice = {
            "index": 0,
            "text": piece,
            "logprobs": None,
            "finish_reason": answer.finish_reason if i == last else None,
            "stop_reason": None,
            "prompt_token_ids": None,
            "token_ids": None,
        }
        yield sse_event({**head, "choices": [choice]}), True
    if include_usage:
        yield _usage_frame(head, prompt_tokens, answer.completion_tokens, fp), False
    yield SSE_DONE, False


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
