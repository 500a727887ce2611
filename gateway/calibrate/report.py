"""The calibration report, as text for a person and as JSON for a script.

Both hold the same things: per cohort precision, recall, F1, support and how many were predicted, as written and as
suggested; the confusion table (rows: the labeled cohort, columns: the predicted one); each semantic rule's threshold
as written and as suggested with its cohort's score at both; the policy's diff. The JSON also lists each request's
line, label and predictions, so anything it reports can be recomputed from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.calibrate.edit import format_threshold
from gateway.calibrate.metrics import Score, confusion, score_cohorts
from gateway.calibrate.outcome import Outcome
from gateway.calibrate.suggest import Suggestion

DIGITS = 6


def render_json(
    outcome: Outcome, diff: str, labeled: str, target_precision: float | None, out: Path | None
) -> dict[str, Any]:
    cohorts, labels = outcome.cohorts, outcome.labels
    return {
        "policy": outcome.policy.path,
        "policy_version": outcome.policy.version,
        "labeled": labeled,
        "requests": len(labels),
        "objective": "f1" if target_precision is None else "recall_at_precision",
        "target_precision": target_precision,
        "cohorts": _scores_json(cohorts, labels, outcome.written),
        "confusion": {"cohorts": cohorts, "counts": confusion(cohorts, labels, outcome.written)},
        "rules": [_rule_json(s) for s in outcome.suggestions],
        "suggested": {
            "cohorts": _scores_json(cohorts, labels, outcome.suggested),
            "confusion": {"cohorts": cohorts, "counts": confusion(cohorts, labels, outcome.suggested)},
        },
        "predictions": [
            {"line": item.line, "cohort": item.cohort, "written": written, "suggested": suggested}
            for item, written, suggested in zip(outcome.labeled, outcome.written, outcome.suggested, strict=True)
        ],
        "changed": any(s.changed for s in outcome.suggestions),
        "diff": diff,
        "out": str(out) if out is not None else None,
        "classifications": outcome.passes,
    }


def _score_json(score: Score) -> dict[str, Any]:
    return {
        "precision": round(score.precision, DIGITS),
        "recall": round(score.recall, DIGITS),
        "f1": round(score.f1, DIGITS),
        "support": score.support,
        "predicted": score.predicted,
    }


def _scores_json(cohorts: Sequence[str], labels: Sequence[str], predictions: Sequence[str]) -> list[dict[str, Any]]:
    scores = score_cohorts(cohorts, labels, predictions)
    return [{"cohort": cohort, **_score_json(score)} for cohort, score in scores.items()]


def _rule_json(s: Suggestion) -> dict[str, Any]:
    return {
        "cohort": s.rule.cohort,
        "path": s.rule.path,
        "model": s.rule.spec.model,
        "threshold": s.threshold,
        "threshold_is_default": not s.explicit,
        "suggested": s.suggested,
        "same_score": _interval_json(s.interval),
        "similarities_tried": s.tried,
        "before": _score_json(s.before),
        "after": _score_json(s.after),
        "kept_because": s.why or None,
    }


def _interval_json(interval: tuple[float | None, float] | None) -> dict[str, float | None] | None:
    """The thresholds that score as the suggested one: above ``above`` (None: any) and up to ``up_to``."""
    if interval is None:
        return None
    low, high = interval
    return {"above": round(low, DIGITS) if low is not None else None, "up_to": round(high, DIGITS)}


def render_text(outcome: Outcome, diff: str, labeled: str, target_precision: float | None, out: Path | None) -> str:
    cohorts, labels = outcome.cohorts, outcome.labels
    lines = [
        f"policy {outcome.policy.path} (version {outcome.policy.version}), "
        f"{len(labels)} labeled requests from {labeled}",
        "",
        "as written:",
        *_score_table(cohorts, labels, outcome.written),
        "",
        "confusion, as written (rows: labeled cohort, columns: predicted cohort):",
        *_confusion_table(cohorts, confusion(cohorts, labels, outcome.written)),
    ]
    if outcome.suggestions:
        objective = "highest F1" if target_precision is None else f"precision >= {target_precision:g}, most recall"
        lines += ["", f"semantic rules ({objective} of the rule's cohort):"]
        lines += [_rule_line(s) for s in outcome.suggestions]
    else:
        lines += ["", "the policy has no semantic rule: no threshold to suggest"]
    if any(s.changed for s in outcome.suggestions):
        lines += ["", "as suggested:", *_score_table(cohorts, labels, outcome.suggested)]
        lines += ["", "confusion, as suggested:"]
        lines += _confusion_table(cohorts, confusion(cohorts, labels, outcome.suggested))
        lines += ["", diff.rstrip("\n")]
    elif outcome.suggestions:
        lines += ["", "no threshold to change: the policy as written is what this labeled set suggests"]
    if out is not None:
        lines += ["", f"wrote {out}"]
    lines += ["", "(precision, recall and F1 are 0 where undefined: no request predicted, or none labeled)"]
    return "\n".join(lines)


def _rule_line(s: Suggestion) -> str:
    written = format_threshold(s.threshold) + ("" if s.explicit else " (default)")
    head = f"  {s.rule.name}: threshold {written}"
    if s.suggested is None:
        return f"{head} kept, {s.why}; {s.rule.cohort}: {_brief(s.before)}"
    same = ""
    if s.interval is not None:
        low, high = s.interval
        same = f"; the same above {low:.4f} up to {high:.4f}" if low is not None else f"; the same up to {high:.4f}"
    return (
        f"{head} -> {format_threshold(s.suggested)}; {s.rule.cohort}: "
        f"f1 {s.before.f1:.3f} -> {s.after.f1:.3f}, precision {s.before.precision:.3f} -> {s.after.precision:.3f}, "
        f"recall {s.before.recall:.3f} -> {s.after.recall:.3f} ({s.tried} similarities tried{same})"
    )


def _brief(score: Score) -> str:
    return f"f1 {score.f1:.3f}, precision {score.precision:.3f}, recall {score.recall:.3f}"


def _score_table(cohorts: Sequence[str], labels: Sequence[str], predictions: Sequence[str]) -> list[str]:
    rows = [["cohort", "precision", "recall", "f1", "support", "predicted"]]
    for cohort, score in score_cohorts(cohorts, labels, predictions).items():
        figures = (score.precision, score.recall, score.f1)
        rows.append([cohort, *(f"{x:.3f}" for x in figures), str(score.support), str(score.predicted)])
    return _table(rows)


def _confusion_table(cohorts: Sequence[str], counts: list[list[int]]) -> list[str]:
    rows = [["labeled \\ predicted", *cohorts]]
    rows += [[cohort, *(str(n) for n in row)] for cohort, row in zip(cohorts, counts, strict=True)]
    return _table(rows)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(_cell(i, cell, widths[i]) for i, cell in enumerate(row)) for row in rows]


def _cell(column: int, text: str, width: int) -> str:
    return text.ljust(width) if column == 0 else text.rjust(width)
