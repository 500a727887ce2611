"""Request counters, read by tests through ``GET /sim/stats`` and by load-aware routing through ``/metrics``.

Counters are plain ints mutated on the event loop (one thread), so no locks. ``/metrics`` is written by hand in
Prometheus text format with vLLM's metric names and labels (sorted, as vLLM's exporter writes them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

_COUNTERS = (
    "requests",
    "chat",
    "completions",
    "responses",
    "embeddings",
    "stream",
    "non_stream",
    "completed",
    "rejected",
    "errors",
    "rate_limited",
    "hung",
    "cancelled",
    "shadow",
    "invalid_json",
    "malformed_tool_calls",
    "refusals",
    "stream_cut",
    "prompt_tokens",
    "generation_tokens",
)


@dataclass(slots=True)
class ModelStats:
    """Counts for one served model. ``running``/``waiting`` are gauges; the rest only grow until a reset.

    ``requests`` counts every API request for the model, by API in ``chat``, ``completions``, ``responses`` and
    ``embeddings``. ``rejected`` counts 400s for the model's limits (or an API its kind does not serve),
    ``errors`` injected errors (not 429s, which are ``rate_limited``), ``cancelled`` requests whose client went
    away before the answer finished.
    """

    requests: int = 0
    chat: int = 0
    completions: int = 0
    responses: int = 0
    embeddings: int = 0
    stream: int = 0
    non_stream: int = 0
    completed: int = 0
    rejected: int = 0
    errors: int = 0
    rate_limited: int = 0
    hung: int = 0
    cancelled: int = 0
    shadow: int = 0
    running: int = 0
    waiting: int = 0
    invalid_json: int = 0
    malformed_tool_calls: int = 0
    refusals: int = 0
    stream_cut: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    last_headers: dict[str, str] = field(default_factory=dict)

    def reset(self) -> None:
        """Zero the counters; the ``running``/``waiting`` gauges describe live requests and are kept."""
        for name in _COUNTERS:
            setattr(self, name, 0)
        self.finished = {}
        self.last_headers = {}

    def as_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class SimStats:
    """All counters. ``invalid_requests`` are bodies rejected before the model was known."""

    models: dict[str, ModelStats]
    total_requests: int = 0
    health_checks: int = 0
    unknown_model: int = 0
    invalid_requests: int = 0

    @classmethod
    def for_models(cls, names: list[str]) -> SimStats:
        return cls({name: ModelStats() for name in names})

    def reset(self) -> None:
        self.total_requests = self.health_checks = self.unknown_model = self.invalid_requests = 0
        for model in self.models.values():
            model.reset()

    def as_json(self) -> dict[str, Any]:
        return {
            "total_requests": self.total_requests,
            "health_checks": self.health_checks,
            "unknown_model": self.unknown_model,
            "invalid_requests": self.invalid_requests,
            "models": {name: s.as_json() for name, s in self.models.items()},
        }


_GAUGES = (
    ("vllm:num_requests_running", "Number of requests in model execution batches."),
    ("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
    ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
)
_TOKEN_COUNTERS = (
    ("vllm:prompt_tokens_total", "Number of prefill tokens processed.", "prompt_tokens"),
    ("vllm:generation_tokens_total", "Number of generation tokens processed.", "generation_tokens"),
)


def render_metrics(stats: SimStats, max_num_seqs: dict[str, int]) -> str:
    """Prometheus text for every served model; KV-cache usage is running / ``max_num_seqs``."""
    lines: list[str] = []
    labels = {name: f'engine="0",model_name="{_escape(name)}"' for name in stats.models}
    for metric, help_text in _GAUGES:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        for name, s in stats.models.items():
            if metric == "vllm:num_requests_running":
                value = float(s.running)
            elif metric == "vllm:num_requests_waiting":
                value = float(s.waiting)
            else:
                value = min(1.0, s.running / max_num_seqs[name])
            lines.append(f"{metric}{{{labels[name]}}} {value}")
    for metric, help_text, attr in _TOKEN_COUNTERS:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
        lines += [f"{metric}{{{labels[n]}}} {float(getattr(s, attr))}" for n, s in stats.models.items()]
    metric = "vllm:request_success_total"
    lines += [f"# HELP {metric} Count of successfully processed requests.", f"# TYPE {metric} counter"]
    for name, s in stats.models.items():
        for reason in sorted({"stop", "length", *s.finished}):
            label = f'engine="0",finished_reason="{reason}",model_name="{_escape(name)}"'
            lines.append(f"{metric}{{{label}}} {float(s.finished.get(reason, 0))}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
