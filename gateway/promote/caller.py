"""One eval request to one model: streamed (so time to first token is measured), retried, bounded in time.

Transport failures (connection errors, timeouts, a stream cut midway, 5xx, 429) are retried up to ``retries`` times
on the model's next replica after a short backoff; they say nothing about the model's quality. A 4xx is the model's
answer to this input (a prompt over its context window, say) and is final. What is left after the retries is a
:class:`Reply` with ``error`` set, which the scorers count as a failure of every evaluator that applies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import UpstreamError, UpstreamStatus
from gateway.evals.answer import FinishedAnswer, StreamAssembler
from gateway.policy.schema import TimeoutsSpec
from gateway.promote.backends import Endpoint
from gateway.upstream.client import Timeouts, UpstreamClient
from gateway.wire import dumps, loads

MAX_ANSWER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Reply:
    """What one model did with one case. Seconds for times; token counts from the backend's ``usage``."""

    answer: FinishedAnswer | None
    error: str | None
    attempts: int
    prompt_tokens: int | None = None
    transport_error: bool = False
    """The error is the transport's (still failing after the retries), not the model's answer (a 4xx)."""

    @property
    def completion_tokens(self) -> int | None:
        return self.answer.completion_tokens if self.answer is not None else None


_MAX_BACKOFF_S = 2.0


class StreamBroken(UpstreamError):
    """The stream ended without ``[DONE]`` or carried an error event: a transport failure, retried."""


class ChatCaller:
    def __init__(
        self,
        client: UpstreamClient,
        timeouts: TimeoutsSpec,
        *,
        retries: int = 2,
        backoff_s: float = 0.25,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._timeouts = Timeouts(timeouts.connect_s, timeouts.first_byte_s)
        self._total_s = timeouts.total_s
        self._retries = retries
        self._backoff_s = backoff_s
        self._clock = clock
        self._sleep = sleep

    async def ask(self, endpoint: Endpoint, request: Mapping[str, Any], *, start: int = 0) -> Reply:
        """``request`` (a chat body without ``model``) to ``endpoint``; replicas tried from index ``start`` on."""
        body = {
            **request,
            "model": endpoint.served_name,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"content-type": "application/json"}
        if endpoint.authorization is not None:
            headers["authorization"] = endpoint.authorization
        payload = dumps(body)
        error = "not attempted"
        for attempt in range(self._retries + 1):
            if attempt:
                await self._sleep(min(self._backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S))
            url = endpoint.url(start + attempt) + "/v1/chat/completions"
            try:
                async with asyncio.timeout(self._total_s):
                    answer, prompt_tokens = await self._once(url, payload, headers, request)
                return Reply(answer, None, attempt + 1, prompt_tokens)
            except TimeoutError:
                error = f"timed out after {self._total_s:g}s"
            except UpstreamStatus as exc:
                if not exc.retryable:
                    return Reply(None, exc.message, attempt + 1)
                error = exc.message
            except UpstreamError as exc:
                error = exc.message
        return Reply(None, f"{error} (after {self._retries + 1} attempts)", self._retries + 1, transport_error=True)

    async def _once(
        self, url: str, payload: bytes, headers: dict[str, str], request: Mapping[str, Any]
    ) -> tuple[FinishedAnswer, int | None]:
        started = self._clock()
        response = await self._client.post(url, payload, headers, self._timeouts)
        if response.status != 200:
            raise UpstreamStatus(response.status, await response.read(MAX_ANSWER_BYTES))
        assembler = StreamAssembler()
        ttft_s: float | None = None
        prompt_tokens: int | None = None
        done = False
        try:
            async for data in response.events(MAX_ANSWER_BYTES):
                if data == b"[DONE]":
                    done = True
                    break
                chunk = _chunk(data)
                if "error" in chunk:
                    raise StreamBroken(f"error event in the stream: {str(chunk['error'])[:200]}")
                if ttft_s is None and _has_tokens(chunk):
                    ttft_s = self._clock() - started
                usage = chunk.get("usage")
                if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
                    prompt_tokens = usage["prompt_tokens"]
                assembler.add(chunk)
        finally:
            response.close()
        if not done:
            raise StreamBroken("the stream ended without [DONE]")
        total_s = self._clock() - started
        return assembler.finish(request, ttft_s=ttft_s if ttft_s is not None else total_s, total_s=total_s), (
            prompt_tokens
        )


def _chunk(data: bytes) -> dict[str, Any]:
    try:
        parsed = loads(data)
    except ValueError:
        raise StreamBroken(f"a stream event is not JSON: {data[:100]!r}") from None
    if not isinstance(parsed, dict):
        raise StreamBroken("a stream event is not a JSON object")
    return parsed


def _has_tokens(chunk: Mapping[str, Any]) -> bool:
    """The chunk carries generated content or a tool call (vLLM's role chunk does not count)."""
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")):
            return True
    return False
