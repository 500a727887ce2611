"""The eval's outputs for people and machines: ``report.json``, ``report.md`` and ``cases.jsonl``.

``report.json`` is the contract (CI jobs and dashboards read it); ``report.md`` renders the same data as per-cohort
tables; ``cases.jsonl`` holds every answer with every outcome, so a reviewer can see *why* a rate is what it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.promote.decide import CohortDecision, Comparison
from gateway.promote.noninferiority import CASES_CAP
from gateway.promote.runner import Trial
from gateway.promote.stats import PassRate
from gateway.promote.summary import ModelSummary

REPORT_VERSION = 1


@dataclass(frozen=True)
class RunInfo:
    policy: str
    dataset: str
    candidate: str
    baselines: list[str]
    judge: str | None
    repeats: int
    settings: dict[str, Any]


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _rate(rate: PassRate) -> dict[str, Any]:
    return {
        "passed": rate.passed,
        "failed": rate.failed,
        "rate": _round(rate.rate),
        "ci": [_round(rate.low), _round(rate.high)],
    }


def _model(summary: ModelSummary) -> dict[str, Any]:
    return {
        "trials": summary.trials,
        "errors": summary.errors,
        "transport_errors": summary.transport_errors,
        "evaluators": {name: _rate(rate) for name, rate in summary.rates.items()},
        "latency_s": {
            "ttft_p50": _round(summary.ttft_p50),
            "ttft_p95": _round(summary.ttft_p95),
            "total_p50": _round(summary.total_p50),
            "total_p95": _round(summary.total_p95),
        },
        "tokens": {
            "prompt_mean": _round(summary.prompt_tokens_mean, 2),
            "completion_mean": _round(summary.completion_tokens_mean, 2),
        },
    }


def _comparison(comparison: Comparison) -> dict[str, Any]:
    paired = comparison.method == "paired"
    return {
        "evaluator": comparison.evaluator,
        "required": comparison.required,
        "cases": comparison.cases,
        "best_baseline": comparison.best_baseline,
        "method": comparison.method,
        "pairs": comparison.pairs if paired else None,
        "discordant": {"candidate_only": comparison.only_candidate, "baseline_only": comparison.only_baseline}
        if paired
        else None,
        "delta": _round(comparison.delta),
        "delta_ci": None
        if comparison.delta_low is None
        else [_round(comparison.delta_low), _round(comparison.delta_high)],
        "p": _significant(comparison.p_value),
        "threshold": _significant(comparison.threshold),
        "rank": comparison.rank,
        "blocked_by": comparison.blocked_by,
        "cases_needed": comparison.cases_needed,
        "within_tolerance": comparison.ok,
    }


def _significant(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


def _family(settings: dict[str, Any], decisions: Sequence[CohortDecision]) -> dict[str, Any]:
    """How the run's comparisons were tested: method, multiplicity, one-sided alpha and m."""
    tested = sum(1 for d in decisions for c in d.comparisons if c.p_value is not None)
    return {
        "method": settings.get("statistics", "paired"),
        "multiplicity": settings.get("multiplicity", "holm"),
        "alpha": _significant((1 - settings["confidence"]) / 2),
        "comparisons": tested,
    }


def report_json(
    info: RunInfo, decisions: Sequence[CohortDecision], changes: list[str], exit_code: int
) -> dict[str, Any]:
    return {
        "version": REPORT_VERSION,
        "policy": info.policy,
        "dataset": info.dataset,
        "candidate": info.candidate,
        "baselines": info.baselines,
        "judge": info.judge,
        "repeats": info.repeats,
        "settings": info.settings,
        "statistics": _family(info.settings, decisions),
        "cohorts": [
            {
                "cohort": d.cohort,
                "asked": d.asked,
                "verdict": "earned" if d.earned else "held",
                "reasons": d.reasons,
                "cases": d.cases,
                "incumbent": d.incumbent,
                "models": {name: _model(summary) for name, summary in d.models.items()},
                "comparisons": [_comparison(c) for c in d.comparisons],
                "cases_needed": d.cases_needed,
                "cases_needed_note": d.needed or None,
            }
            for d in decisions
        ],
        "earned": [d.cohort for d in decisions if d.asked and d.earned],
        "held": [d.cohort for d in decisions if d.asked and not d.earned],
        "proposed_changes": changes,
        "exit_code": exit_code,
    }


def case_lines(trials: Iterable[Trial]) -> Iterable[bytes]:
    """One JSON line per answer: the case, the model, what it answered, timings, tokens and every outcome."""
    for trial in trials:
        answer = trial.reply.answer
        record = {
            "case": trial.case.id,
            "line": trial.case.line,
            "cohort": trial.case.cohort,
            "model": trial.model,
            "repeat": trial.repeat,
            "error": trial.reply.error,
            "transport_error": trial.reply.transport_error,
            "attempts": trial.reply.attempts,
            "content": answer.content if answer else None,
            "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in answer.tool_calls] if answer else [],
            "finish_reason": answer.finish_reason if answer else None,
            "ttft_s": _round(answer.ttft_s) if answer else None,
            "total_s": _round(answer.total_s) if answer else None,
            "prompt_tokens": trial.reply.prompt_tokens,
            "completion_tokens": trial.reply.completion_tokens,
            "outcomes": {
                name: {
                    "verdict": s.verdict,
                    "reason": s.reason,
                    **({"score": _round(s.score)} if s.score is not None else {}),
                }
                for name, s in trial.outcomes.items()
            },
        }
        yield orjson.dumps(record) + b"\n"


def _pct(value: float) -> str:
    return f"{value:.0%}" if value in (0.0, 1.0) else f"{value:.1%}"


def _cell(rate: PassRate | None) -> str:
    if rate is None or not rate.n:
        return "-"
    return f"{_pct(rate.rate)} ({rate.passed}/{rate.n}, {_pct(rate.low)}..{_pct(rate.high)})"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report_markdown(report: dict[str, Any], decisions: Sequence[CohortDecision]) -> str:
    settings = report["settings"]
    lines = [
        f"# Promotion eval: {report['candidate']}",
        "",
        f"Policy `{report['policy']}`, dataset `{report['dataset']}`, baselines {', '.join(report['baselines'])}"
        + (f", judge {report['judge']}" if report["judge"] else "")
        + f", {report['repeats']} repeat(s).",
        f"Tolerance {settings['tolerance']:.1%}, confidence {settings['confidence']:.0%}, "
        f"min_cases {settings['min_cases']}. Pass rates: rate (passed/n, Wilson interval). "
        "Δ: candidate minus the best baseline (Newcombe interval).",
        _method_line(report["statistics"]),
        "",
        f"**Earned:** {', '.join(report['earned']) or 'none'}. **Held:** {', '.join(report['held']) or 'none'}.",
        "",
    ]
    for decision in decisions:
        lines.extend(_cohort_section(decision, report["candidate"]))
    if report["proposed_changes"]:
        lines += ["## Proposed policy changes", "", *(f"- {change}" for change in report["proposed_changes"]), ""]
    return "\n".join(lines)


def _cohort_section(decision: CohortDecision, candidate: str) -> list[str]:
    verdict = "earned" if decision.earned else "held"
    asked = "" if decision.asked else " (not asked)"
    evaluators = [c.evaluator for c in decision.comparisons]
    head = [
        "model",
        *(f"{e}{' *' if c.required else ''}" for e, c in zip(evaluators, decision.comparisons, strict=True)),
    ]
    head += ["p95 TTFT s", "p95 total s", "out tokens", "errors"]
    rows = [head, ["---"] * len(head)]
    for name, summary in decision.models.items():
        label = f"**{name}**" if name == candidate else name
        tokens = "-" if summary.completion_tokens_mean is None else f"{summary.completion_tokens_mean:.1f}"
        cells = [_cell(summary.rates.get(e)) for e in evaluators]
        rows.append(
            [label, *cells, _seconds(summary.ttft_p95), _seconds(summary.total_p95), tokens, str(summary.errors)]
        )
    rows.append(["Δ vs best", *(_delta(c) for c in decision.comparisons), "", "", "", ""])
    lines = [
        f"## {decision.cohort}: {verdict.upper()}{asked}",
        "",
        f"{decision.cases} cases; incumbent {decision.incumbent or '-'}; * = required.",
        "",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    required = [c for c in decision.comparisons if c.required and c.delta is not None]
    if required:
        lines += ["Required comparisons:", "", *(f"- {_tested(c)}" for c in required), ""]
    if decision.reasons:
        lines += ["Why held:", "", *(f"- {reason}" for reason in decision.reasons)]
        if decision.needed:
            lines += ["", f"Cases needed: {decision.needed}."]
    else:
        lines.append(
            "Why earned: every required evaluator is within tolerance of the best baseline, and the bounds hold."
        )
    lines.append("")
    return lines


def _delta(comparison: Comparison) -> str:
    if comparison.delta is None or comparison.delta_low is None or comparison.delta_high is None:
        return "-"
    mark = "" if not comparison.required else (" ✓" if comparison.ok else " ✗")
    interval = f"{comparison.delta_low:+.1%}..{comparison.delta_high:+.1%}"
    return f"{comparison.delta:+.1%} ({interval}) vs {comparison.best_baseline}{mark}"


def _method_line(statistics: dict[str, Any]) -> str:
    paired = (
        "Paired: over the cases (and repeats) both models answered, decided by the discordant pairs: b where only "
        "the candidate passed, c where only the baseline did."
        if statistics["method"] == "paired"
        else "Independent: the two samples as unrelated."
    )
    m = statistics["comparisons"]
    if statistics["multiplicity"] == "holm":
        family = (
            f"Holm over the run's {m} required comparisons: sorted by p, the i-th earns while p <= "
            f"{statistics['alpha']:.3g} / ({m} - i + 1), and the first that fails stops the rest."
        )
    else:
        family = f"No multiplicity correction: each of the {m} required comparisons at p <= {statistics['alpha']:.3g}."
    return f"{paired} {family} p: one-sided, that the candidate is no worse than the tolerance allows."


def _tested(c: Comparison) -> str:
    how = (
        f"paired over {c.pairs} pairs, decided by b={c.only_candidate}, c={c.only_baseline} discordant pairs"
        if c.method == "paired"
        else "independent samples"
    )
    text = f"{c.evaluator} vs {c.best_baseline}: {how}; Δ {_interval(c)}"
    if c.p_value is None or c.threshold is None:
        return text
    verdict = "✓" if c.ok else "✗"
    rank = "" if c.rank is None else f" ({c.rank} of {c.family})"
    text += f"; p{_p(c.p_value)}, threshold {c.threshold:.3g}{rank} {verdict}"
    if c.blocked_by is not None:
        return f"{text}, held: Holm stopped at {c.blocked_by}"
    if c.ok is False:
        text += f", cases needed: {_needed(c)}"
    return text


def _interval(c: Comparison) -> str:
    if c.delta is None or c.delta_low is None or c.delta_high is None:
        return "-"
    return f"{c.delta:+.1%} ({c.delta_low:+.1%}..{c.delta_high:+.1%})"


def _p(value: float) -> str:
    return "<1e-6" if value < 1e-6 else f"={value:.3g}"


def _needed(c: Comparison) -> str:
    if c.cases_needed is not None:
        return f"{c.cases_needed} (now {c.cases})"
    at_rates = c.p_value is None or c.p_value >= 0.5  # p >= 0.5: the difference itself is below -tolerance
    return "not at these rates" if at_rates else f"more than {CASES_CAP:,}"
