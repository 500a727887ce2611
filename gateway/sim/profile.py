"""Behavior profiles for the simulated vLLM server.

A profile says how a served model behaves: latency, answer length, context size, and the rates at which faults
are injected. ``SimProfile`` holds a default profile plus per-model overrides; an override only replaces the
fields it sets, so ``models: {slow: {ttft_s: 2}}`` keeps every other field of ``default``. Both are strict
(unknown keys rejected) and frozen: a live change (``POST /sim/config``) builds a new ``SimProfile`` and swaps it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
"""A probability in [0, 1], rolled once per request."""


class ModelProfile(BaseModel):
    """How one served model behaves. Zero latency and no faults by default.

    Times are in seconds. Rates are probabilities in [0, 1] rolled per request from the seeded RNG.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_s: float = Field(default=0.0, ge=0.0)
    per_token_s: float = Field(default=0.0, ge=0.0)
    output_tokens: int = Field(default=16, ge=1)
    """Length of a natural free-text answer; ``max_tokens`` below it cuts it (finish_reason "length")."""
    max_model_len: int = Field(default=4096, ge=1)
    max_num_seqs: int = Field(default=256, ge=1)
    """Requests run at once; more wait (``vllm:num_requests_waiting``), as in vLLM's scheduler."""
    error_rate: Rate = 0.0
    error_status: int = Field(default=500, ge=400, le=599)
    rate_limit_rate: Rate = 0.0
    hang_rate: Rate = 0.0
    """A hung request never answers; it ends only when the client goes away (or the server stops)."""
    invalid_json_rate: Rate = 0.0
    malformed_tool_call_rate: Rate = 0.0
    refusal_rate: Rate = 0.0
    stream_cut_after: int | None = Field(default=None, ge=0)
    """Close the connection after this many content chunks of a stream, without ``data: [DONE]``."""
    tool_parser: bool = True
    """Like ``--enable-auto-tool-choice --tool-call-parser hermes``; without it, tool use is a 400."""
    kind: Literal["any", "generate", "embedding"] = "any"
    """APIs served: ``generate`` (chat, completions, responses), ``embedding`` (embeddings), ``any`` both.
    A request for an API the kind does not serve is a 400, as from a vLLM server of the other kind."""
    embedding_dim: int = Field(default=256, ge=1, le=8192)
    """Length of ``/v1/embeddings`` vectors; a request's ``dimensions`` may ask for fewer."""

    def overlay(self, changes: dict[str, Any]) -> ModelProfile:
        """A validated copy with ``changes`` applied; the changed fields count as explicitly set."""
        return ModelProfile.model_validate({**self.model_dump(exclude_unset=True), **changes})


class SimProfile(BaseModel):
    """The whole simulator configuration: seed, default model profile, per-model overrides, health status."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    default: ModelProfile = ModelProfile()
    models: dict[str, ModelProfile] = Field(default_factory=dict)
    health_status: int = Field(default=200, ge=100, le=599)

    def for_model(self, name: str) -> ModelProfile:
        """The effective profile of ``name``: ``default`` with the override's explicitly set fields on top."""
        override = self.models.get(name)
        if override is None:
            return self.default
        return self.default.overlay(override.model_dump(exclude_unset=True))

    def with_changes(self, model: str | None, changes: dict[str, Any]) -> SimProfile:
        """A new profile with ``changes`` applied to ``model``, or to the default and every override."""
        if model is not None:
            base = self.models.get(model, ModelProfile())
            return self.replace(models={**self.models, model: base.overlay(changes)})
        return self.replace(
            default=self.default.overlay(changes),
            models={name: p.overlay(changes) for name, p in self.models.items()},
        )

    def replace(self, **update: Any) -> SimProfile:
        """A validated copy with top-level fields replaced (overrides keep their set/unset fields)."""
        current = {
            "seed": self.seed,
            "default": self.default,
            "models": self.models,
            "health_status": self.health_status,
        }
        return SimProfile.model_validate({**current, **update})

    @classmethod
    def from_file(cls, path: str | Path) -> SimProfile:
        """Load a YAML or JSON file (JSON by suffix ``.json``); an empty file gives the defaults."""
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        return cls.model_validate(data or {})
