"""``report.png``: one panel per cohort, pass rate per evaluator and model, with the Wilson intervals as error bars.

Drawn on a bare :class:`matplotlib.figure.Figure` (no ``pyplot``): no global figure state and no GUI backend, so it
works in CI and in threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from gateway.promote.decide import CohortDecision


def draw_report(decisions: Sequence[CohortDecision], candidate: str, path: Path) -> None:
    panels = max(1, len(decisions))
    figure = Figure(figsize=(10, 3.2 * panels), layout="constrained")
    axes = figure.subplots(panels, 1, squeeze=False)[:, 0]
    for ax, decision in zip(axes, decisions, strict=False):
        evaluators = [c.evaluator for c in decision.comparisons]
        models = list(decision.models)
        width = 0.8 / max(1, len(models))
        for i, model in enumerate(models):
            rates = [decision.models[model].rates.get(e) for e in evaluators]
            values = [r.rate if r is not None and r.n else 0.0 for r in rates]
            below = [max(0.0, v - r.low) if r is not None and r.n else 0.0 for v, r in zip(values, rates, strict=True)]
            above = [max(0.0, r.high - v) if r is not None and r.n else 0.0 for v, r in zip(values, rates, strict=True)]
            positions = [x + (i - (len(models) - 1) / 2) * width for x in range(len(evaluators))]
            ax.bar(
                positions,
                values,
                width,
                yerr=[below, above],
                capsize=2,
                label=model,
                edgecolor="black" if model == candidate else "none",
                linewidth=1.2 if model == candidate else 0,
            )
        verdict = "EARNED" if decision.earned else "HELD"
        ax.set_title(f"{decision.cohort}: {verdict}{'' if decision.asked else ' (not asked)'} ({decision.cases} cases)")
        ax.set_xticks(range(len(evaluators)), evaluators, rotation=15, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("pass rate")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if not decisions:
        axes[0].set_title("no cohorts evaluated")
    figure.savefig(path, dpi=100)
