"""FinishedAnswer from non-streamed bodies and from SSE chunk sequences, shaped like what vLLM 0.32 sends."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.evals.answer import FinishedAnswer, StreamAssembler, ToolCall, answer_from_json

CHAT_REQUEST: dict[str, Any] = {"model": "tiny-base", "messages": [{"role": "user", "content": "hi"}]}
WEATHER_REQUEST: dict[str, Any] = {
    **CHAT_REQUEST,
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
}

CHAT_BODY: dict[str, Any] = {
    "id": "chatcmpl-a81ff50131ec3763",
    "object": "chat.completion",
    "model": "tiny-base",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "agentmple onr temonkin",
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning": None,
            },
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
        }
    ],
    "usage": {"prompt_tokens": 33, "total_tokens": 49, "completion_tokens": 16},
}

COMPLETION_BODY: dict[str, Any] = {
    "id": "cmpl-86018d331a44528e",
    "object": "text_completion",
    "model": "tiny-base",
    "choices": [{"index": 0, "text": " 07reaFlatdab", "logprobs": None, "finish_reason": "stop", "stop_reason": None}],
    "usage": {"prompt_tokens": 4, "total_tokens": 12, "completion_tokens": 8},
}

TOOL_BODY: dict[str, Any] = {
    "id": "chatcmpl-a1b7eb0e550907e4",
    "object": "chat.completion",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "",
                "refusal": None,
                "function_call": None,
                "tool_calls": [
                    {
                        "id": "chatcmpl-tool-b0e9b45fce4617d2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": " {ough0"}'},
                    },
                    {"id": "chatcmpl-tool-2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                ],
            },
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 219, "total_tokens": 288, "completion_tokens": 69},
}


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-83959c4570ea8b2b",
        "object": "chat.completion.chunk",
        "model": "tiny-base",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


USAGE_CHUNK: dict[str, Any] = {
    "id": "chatcmpl-83959c4570ea8b2b",
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 19, "total_tokens": 23, "completion_tokens": 4},
}

CHAT_STREAM: list[dict[str, Any]] = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "us"}),
    _chunk({"content": " first"}),
    _chunk({"content": "ough"}, "length"),
    USAGE_CHUNK,
]

TOOL_STREAM: list[dict[str, Any]] = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk(
        {
            "content": None,
            "tool_calls": [
                {
                    "id": "chatcmpl-tool-bd334808620df510",
                    "type": "function",
                    "index": 0,
                    "function": {"name": "get_weather"},
                }
            ],
        }
    ),
    _chunk({"content": None, "tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
    _chunk({"content": None, "tool_calls": [{"index": 0, "function": {"arguments": '"Paris"'}}]}),
    _chunk({"content": None, "tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}),
    _chunk({}, "tool_calls"),
    {**USAGE_CHUNK, "usage": {"prompt_tokens": 182, "total_tokens": 226, "completion_tokens": 44}},
]

COMPLETION_STREAM: list[dict[str, Any]] = [
    {"object": "text_completion", "choices": [{"index": 0, "text": " 0", "finish_reason": None}]},
    {"object": "text_completion", "choices": [{"index": 0, "text": "7", "finish_reason": None}]},
    {"object": "text_completion", "choices": [{"index": 0, "text": "", "finish_reason": "length"}]},
    {"object": "text_completion", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}},
]


def assemble(chunks: list[Any], request: dict[str, Any] = CHAT_REQUEST) -> FinishedAnswer:
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.finish(request, ttft_s=0.05, total_s=0.4)


def test_non_stream_chat() -> None:
    answer = answer_from_json(CHAT_REQUEST, CHAT_BODY, ttft_s=None, total_s=1.5)
    assert answer == FinishedAnswer(
        request=CHAT_REQUEST,
        content="agentmple onr temonkin",
        tool_calls=(),
        finish_reason="length",
        refusal=None,
        ttft_s=None,
        total_s=1.5,
        completion_tokens=16,
    )


def test_non_stream_completion() -> None:
    answer = answer_from_json({"prompt": "x"}, COMPLETION_BODY, ttft_s=0.2, total_s=0.3)
    assert (answer.content, answer.finish_reason, answer.completion_tokens) == (" 07reaFlatdab", "stop", 8)
    assert (answer.tool_calls, answer.refusal, answer.ttft_s, answer.total_s) == ((), None, 0.2, 0.3)


def test_non_stream_tool_calls() -> None:
    answer = answer_from_json(WEATHER_REQUEST, TOOL_BODY, ttft_s=None, total_s=2.0)
    assert answer.content == ""
    assert answer.tool_calls == (
        ToolCall("chatcmpl-tool-b0e9b45fce4617d2", "get_weather", '{"city": " {ough0"}'),
        ToolCall("chatcmpl-tool-2", "get_time", "{}"),
    )
    assert answer.finish_reason == "stop"
    assert answer.completion_tokens == 69


def test_non_stream_refusal_field() -> None:
    body = {"choices": [{"message": {"content": None, "refusal": "I won't."}, "finish_reason": "stop"}]}
    answer = answer_from_json(CHAT_REQUEST, body, ttft_s=None, total_s=1.0)
    assert (answer.content, answer.refusal) == (None, "I won't.")


@pytest.mark.parametrize(
    ("body", "content", "tool_calls", "finish_reason", "tokens"),
    [
        ({}, None, (), None, None),
        ({"choices": []}, None, (), None, None),
        ({"choices": "nope"}, None, (), None, None),
        ({"choices": [None]}, None, (), None, None),
        ({"choices": [{"message": "text"}]}, None, (), None, None),
        ({"choices": [{"message": {"content": 5}, "finish_reason": 3}], "usage": "x"}, None, (), None, None),
        ({"choices": [{"text": "ok"}], "usage": {"completion_tokens": "7"}}, "ok", (), None, None),
        ({"choices": [{"text": "ok"}], "usage": {"completion_tokens": True}}, "ok", (), None, None),
        (
            {
                "choices": [
                    {"message": {"tool_calls": [None, {"function": None}, {"id": 1, "function": {"arguments": 2}}]}}
                ]
            },
            None,
            (ToolCall(None, None, ""), ToolCall(None, None, "")),
            None,
            None,
        ),
        ({"choices": [{"message": {"tool_calls": {"a": 1}}}]}, None, (), None, None),
    ],
)
def test_malformed_bodies_yield_less(
    body: dict[str, Any],
    content: str | None,
    tool_calls: tuple[ToolCall, ...],
    finish_reason: str | None,
    tokens: int | None,
) -> None:
    answer = answer_from_json(CHAT_REQUEST, body, ttft_s=None, total_s=1.0)
    assert (answer.content, answer.tool_calls, answer.finish_reason, answer.completion_tokens) == (
        content,
        tool_calls,
        finish_reason,
        tokens,
    )


def test_non_mapping_body_is_empty() -> None:
    answer = answer_from_json(CHAT_REQUEST, [1, 2], ttft_s=None, total_s=1.0)  # type: ignore[arg-type]
    assert (answer.content, answer.tool_calls, answer.finish_reason) == (None, (), None)


def test_stream_chat() -> None:
    answer = assemble(CHAT_STREAM)
    assert answer == FinishedAnswer(
        request=CHAT_REQUEST,
        content="us firstough",
        tool_calls=(),
        finish_reason="length",
        refusal=None,
        ttft_s=0.05,
        total_s=0.4,
        completion_tokens=4,
    )


def test_stream_tool_call_merges_fragments_by_index() -> None:
    answer = assemble(TOOL_STREAM, WEATHER_REQUEST)
    assert answer.tool_calls == (ToolCall("chatcmpl-tool-bd334808620df510", "get_weather", '{"city": "Paris"}'),)
    assert (answer.content, answer.finish_reason, answer.completion_tokens) == ("", "tool_calls", 44)


def test_stream_parallel_tool_calls_interleaved() -> None:
    answer = assemble(
        [
            _chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": ""}}]}),
            _chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]}),
            _chunk({"tool_calls": [{"index": 1, "id": "late", "function": {"name": "late", "arguments": "[]"}}]}),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}),
        ]
    )
    assert answer.tool_calls == (ToolCall("a", "f", "{}"), ToolCall("b", "g", "[]"))
    assert answer.content is None


def test_stream_tool_call_without_index() -> None:
    answer = assemble(
        [
            _chunk({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{"}}]}),
            _chunk({"tool_calls": [{"function": {"arguments": "}"}}]}),
            _chunk({"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": "{}"}}]}),
        ]
    )
    assert answer.tool_calls == (ToolCall("a", "f", "{}"), ToolCall("b", "g", "{}"))


def test_stream_completion() -> None:
    answer = assemble(COMPLETION_STREAM, {"prompt": "x"})
    assert (answer.content, answer.finish_reason, answer.completion_tokens) == (" 07", "length", 3)


def test_stream_keeps_last_non_null_finish_reason_and_first_choice_only() -> None:
    answer = assemble(
        [
            _chunk({"content": "a"}, "stop"),
            _chunk({"content": "b"}),
            {"choices": [{"index": 1, "delta": {"content": "other"}, "finish_reason": "length"}]},
        ]
    )
    assert (answer.content, answer.finish_reason) == ("ab", "stop")


def test_stream_refusal_deltas() -> None:
    answer = assemble([_chunk({"refusal": "I can"}), _chunk({"refusal": "not."}, "stop")])
    assert (answer.content, answer.refusal) == (None, "I cannot.")


def test_stream_malformed_chunks_are_skipped() -> None:
    malformed: list[Any] = [
        None,
        "data",
        [],
        {},
        {"choices": None},
        {"choices": "x"},
        {"choices": [None, 3, "x"]},
        {"choices": [{"delta": None}]},
        {"choices": [{"delta": {"content": 5, "tool_calls": "x", "refusal": 1}}]},
        {"choices": [{"delta": {"tool_calls": [None, 7]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": "f"}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": "0", "id": 5, "function": {"name": 1, "arguments": 2}}]}}]},
        {"choices": [{"finish_reason": 7, "text": None}]},
        {"choices": [], "usage": None},
        {"choices": [], "usage": {"completion_tokens": "9"}},
    ]
    answer = assemble([CHAT_STREAM[0], *malformed, *CHAT_STREAM[1:]])
    assert (answer.content, answer.finish_reason, answer.completion_tokens) == ("us firstough", "length", 4)
    # Only well-typed parts survive: the calls exist (index 0 and the one without an index) but carry nothing.
    assert answer.tool_calls == (ToolCall(None, None, ""), ToolCall(None, None, ""))


def test_finish_does_not_consume() -> None:
    assembler = StreamAssembler()
    assembler.add(CHAT_STREAM[1])
    first = assembler.finish(CHAT_REQUEST, ttft_s=None, total_s=1.0)
    assembler.add(CHAT_STREAM[2])
    assert first.content == "us"
    assert assembler.finish(CHAT_REQUEST, ttft_s=None, total_s=1.0).content == "us first"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
CHUNK_KEYS = st.sampled_from(["choices", "usage", "delta", "index", "content", "tool_calls", "function", "text"])
CHUNKISH = st.recursive(
    JSON,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(CHUNK_KEYS, children, max_size=4),
    max_leaves=20,
)


@given(st.lists(CHUNKISH, max_size=6), CHUNKISH)
def test_never_raises_on_arbitrary_input(chunks: list[Any], body: Any) -> None:
    answer = assemble(chunks)
    assert answer.content is None or isinstance(answer.content, str)
    assert all(isinstance(call.arguments, str) for call in answer.tool_calls)
    from_body = answer_from_json(CHAT_REQUEST, body, ttft_s=None, total_s=1.0)
    assert from_body.finish_reason is None or isinstance(from_body.finish_reason, str)
