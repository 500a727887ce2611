"""One model on one cohort: pass rates per evaluator, latency and tokens; and the bounds the candidate must keep.

The bounds are absolute (``max_p95_*_s``) or relative to the *reference* model: the cohort's incumbent (the model its
route sends it to now) when it was evaluated, else the best baseline by that measure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.policy.schema import PromotionSpec
from gateway.promote.runner import Trial
from gateway.promote.stats import PassRate, mean, percentile, wilson


@dataclass(frozen=True)
class ModelSummary:
    """One model on one cohort. Seconds for latencies; tokens per answer."""

    model: str
    trials: int
    errors: int
    transport_errors: int
    rates: dict[str, PassRate]
    ttft_p50: float | None
    ttft_p95: float | None
    total_p50: float | None
    total_p95: float | None
    prompt_tokens_mean: float | None
    completion_tokens_mean: float | None


def summarize(model: str, trials: Sequence[Trial], confidence: float) -> ModelSummary:
    outcomes: dict[str, list[bool]] = {}
    for trial in trials:
        for name, scored in trial.outcomes.items():
            if scored.verdict != "n/a":
                outcomes.setdefault(name, []).append(scored.verdict == "pass")
    answered = [t.reply.answer for t in trials if t.reply.answer is not None]
    ttft = [a.ttft_s for a in answered if a.ttft_s is not None]
    total = [a.total_s for a in answered]
    prompt = [float(t.reply.prompt_tokens) for t in trials if t.reply.prompt_tokens is not None]
    completion = [float(a.completion_tokens) for a in answered if a.completion_tokens is not None]
    return ModelSummary(
        model=model,
        trials=len(trials),
        errors=sum(1 for t in trials if t.reply.error is not None),
        transport_errors=sum(1 for t in trials if t.reply.transport_error),
        rates={name: wilson(sum(v), len(v), confidence) for name, v in sorted(outcomes.items())},
        ttft_p50=percentile(ttft, 50),
        ttft_p95=percentile(ttft, 95),
        total_p50=percentile(total, 50),
        total_p95=percentile(total, 95),
        prompt_tokens_mean=mean(prompt),
        completion_tokens_mean=mean(completion),
    )


Measure = Callable[[ModelSummary], float | None]


def bounds(
    models: dict[str, ModelSummary],
    candidate: str,
    baselines: Sequence[str],
    reference: str | None,
    s: PromotionSpec,
) -> list[str]:
    """Why the candidate's latency or tokens hold the cohort; empty when every bound that is set holds."""
    mine = models[candidate]
    problems = []
    for label, value, bound in (
        ("p95 TTFT", mine.ttft_p95, s.max_p95_ttft_s),
        ("p95 total", mine.total_p95, s.max_p95_total_s),
    ):
        if bound is not None and value is not None and value > bound:
            problems.append(f"{label} {value:.3f}s over the {bound:g}s bound")
    measures: tuple[tuple[str, Measure, float | None], ...] = (
        ("p95 total", lambda m: m.total_p95, s.max_latency_ratio),
        ("mean output tokens", lambda m: m.completion_tokens_mean, s.max_tokens_ratio),
    )
    for label, measure, ratio in measures:
        value = measure(mine)
        if ratio is None or value is None:
            continue
        reference_model, limit_of = _reference(models, baselines, reference, measure)
        if limit_of is not None and limit_of > 0 and value > ratio * limit_of:
            problems.append(f"{label} {value:.3g} is over {ratio:g}x {reference_model}'s {limit_of:.3g}")
    return problems


def _reference(
    models: dict[str, ModelSummary], baselines: Sequence[str], reference: str | None, measure: Measure
) -> tuple[str | None, float | None]:
    """The incumbent's value when it was measured, else the best (lowest) baseline's."""
    if reference is not None and reference in models and measure(models[reference]) is not None:
        return reference, measure(models[reference])
    measured = [(b, value) for b in baselines if (value := measure(models[b])) is not None]
    if not measured:
        return None, None
    return min(measured, key=lambda item: item[1])
