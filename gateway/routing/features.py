"""The view of a request that cohort matchers read.

Built once per request from the parsed body and headers; derived text (user messages, prompt length) is computed
lazily so cohorts that never look at content cost nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any


def _text_of(content: Any) -> str:
    """The text of a message's ``content``: a string, or the ``text`` parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _input_messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The Responses API's ``instructions`` and ``input`` (or an embeddings ``input``) as chat messages: what a
    ``content`` matcher reads in them is the user's text, whatever the endpoint."""
    out: list[Mapping[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        out.append({"role": "system", "content": instructions})
    value = body.get("input")
    if isinstance(value, str):
        out.append({"role": "user", "content": value})
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                out.append({"role": "user", "content": item})
            elif isinstance(item, dict) and isinstance(item.get("role"), str):
                out.append({"role": item["role"], "content": item.get("content")})
            elif isinstance(item, dict) and item.get("type") == "function_call_output":
                out.append({"role": "tool", "content": item.get("output")})
    return out


@dataclass(eq=False)
class RequestFeatures:
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-cased names
    api_key: str | None = None  # the name of the client's key in the policy's ``keys``, when auth is on

    @property
    def model(self) -> str:
        value = self.body.get("model")
        return value if isinstance(value, str) else ""

    @property
    def user(self) -> str | None:
        value = self.body.get("user")
        return value if isinstance(value, str) else None

    @property
    def metadata(self) -> Mapping[str, Any]:
        value = self.body.get("metadata")
        return value if isinstance(value, dict) else {}

    @property
    def has_tools(self) -> bool:
        tools = self.body.get("tools")
        return isinstance(tools, list) and len(tools) > 0

    @property
    def response_format(self) -> str:
        fmt = self.body.get("response_format")
        text = self.body.get("text")
        if fmt is None and isinstance(text, dict):  # the Responses API's text.format
            fmt = text.get("format")
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        return kind if isinstance(kind, str) else "text"

    @cached_property
    def _messages(self) -> list[Mapping[str, Any]]:
        messages = self.body.get("messages")
        if isinstance(messages, list):
            return [m for m in messages if isinstance(m, dict)]
        if "input" in self.body:
            return _input_messages(self.body)
        return []

    @cached_property
    def user_text(self) -> str:
        """Text of the user messages (chat) or the prompt (completions): what ``content`` regexes search."""
        if "messages" not in self.body and "input" not in self.body:
            return self._prompt_text
        return "\n".join(_text_of(m.get("content")) for m in self._messages if m.get("role") == "user")

    @cached_property
    def last_user_text(self) -> str:
        """Text of the last user message (or the prompt): the question being asked now, what a ``semantic`` rule
        embeds by default."""
        if "messages" not in self.body and "input" not in self.body:
            return self._prompt_text
        for message in reversed(self._messages):
            if message.get("role") == "user":
                return _text_of(message.get("content"))
        return ""

    @cached_property
    def all_text(self) -> str:
        """Text of every message, system and assistant included (or the prompt)."""
        if "messages" not in self.body and "input" not in self.body:
            return self._prompt_text
        return "\n".join(text for m in self._messages if (text := _text_of(m.get("content"))))

    @cached_property
    def prompt_chars(self) -> int:
        """Characters of every message's text (or of the prompt): a cheap proxy for prompt length."""
        if "messages" not in self.body and "input" not in self.body:
            return len(self._prompt_text)
        return sum(len(_text_of(m.get("content"))) for m in self._messages)

    def prefix_text(self, chars: int) -> str:
        """The first ``chars`` characters of the prompt as the model sees it (system message first): the part a
        vLLM prefix cache can share between requests."""
        if "messages" not in self.body and "input" not in self.body:
            return self._prompt_text[:chars]
        out = ""
        for message in self._messages:
            out += f"{message.get('role')}:{_text_of(message.get('content'))}\n"
            if len(out) >= chars:
                break
        return out[:chars]

    @cached_property
    def _prompt_text(self) -> str:
        prompt = self.body.get("prompt")
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list):
            return "\n".join(p for p in prompt if isinstance(p, str))
        return ""
