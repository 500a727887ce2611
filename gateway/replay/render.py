"""The replay report as text: a summary line, the moves table, new errors, the reproduced figure and notes.

Request ids and names come from the capture file, so anything but printable characters is escaped before it
reaches a terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REASONS = {
    "inexact": "lack text or an embedder a rule needs",
    "previous_response": "continue a previous response",
    "live_unrouted": "failed live before routing",
}


def render_text(report: dict[str, Any]) -> str:
    total, changed = report["total"], report["changed"]
    baseline = "live (as recorded)" if report["baseline"] == "live" else report["baseline"]
    lines = [
        f"replay: {total} requests, {report['policy']} against {baseline}",
        f"changed: {changed} of {total} ({_percent(report['changed_share'])})",
    ]
    if report["moves"]:
        header: tuple[str, ...] = ("from", "", "to", "count", "share", "examples")
        rows: list[tuple[str, ...]] = [
            (_side(m["from"]), "->", _side(m["to"]), str(m["count"]), _percent(m["share"]), _ids(m["examples"]))
            for m in report["moves"]
        ]
        if any(m["inexact"] for m in report["moves"]):  # a column only when some replay lacked text or an embedder
            header = (*header[:5], "inexact", header[5])
            rows = [(*row[:5], str(m["inexact"]), row[5]) for row, m in zip(rows, report["moves"], strict=True)]
        lines += ["", "moves (cohort / first model):", *_table(header, rows)]
    if report["new_errors"]:
        rows = [
            (_error(e["status"], e["code"]), str(e["count"]), _percent(e["share"]), _ids(e["examples"]))
            for e in report["new_errors"]
        ]
        lines += ["", f"new errors under {report['policy']}:", *_table(("error", "count", "share", "examples"), rows)]
    lines += ["", _reproduced(report["reproduced"])]
    notes = list(report["notes"])
    skipped = report["skipped"]
    if skipped["invalid"] or skipped["shadow"]:
        first = skipped["first_invalid_lines"]
        where = f" (first: {first[0]['file']}:{first[0]['line']}: {first[0]['why']})" if first else ""
        notes.append(f"skipped {skipped['invalid']} invalid lines{_safe(where)} and {skipped['shadow']} shadow records")
    if notes:
        lines += ["", "notes:", *(f"  - {note}" for note in notes)]
    return "\n".join(lines)


def _reproduced(reproduced: dict[str, Any]) -> str:
    checked, matched = reproduced["checked"], reproduced["matched"]
    policy = f"{reproduced['policy']} (version {reproduced['version']})"
    unchecked = sum(reproduced["not_checked"].values())
    if not checked and not unchecked:
        return f"reproduced: no record was captured under {policy}, so none could be checked"
    line = f"reproduced: {matched} of {checked} records captured under {policy} replay as recorded"
    if unchecked:
        why = ", ".join(f"{n} {REASONS[reason]}" for reason, n in reproduced["not_checked"].items() if n)
        line += f"; not checked: {why}"
    for miss in reproduced["mismatches"]:
        recorded, replayed = _side(miss["recorded"]), _side(miss["replayed"])
        line += f"\n  {_safe(miss['request_id'])}: recorded {recorded}, replayed {replayed}"
    return line


def _side(side: dict[str, Any]) -> str:
    cohort = _safe(side["cohort"]) if side["cohort"] is not None else "(unclassified)"
    if side["status"] is not None:
        return f"{cohort}: {_error(side['status'], side['error'])}"
    return f"{cohort} / {_safe(side['model'] or '-')}"


def _error(status: int, code: str | None) -> str:
    return f"{status} {_safe(code)}" if code else str(status)


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {i for i, name in enumerate(header) if name in {"count", "share", "inexact"}}
    out = []
    for row in [header, *rows]:
        cells = [cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def _ids(examples: list[str]) -> str:
    return ", ".join(_safe(e) for e in examples)


def _percent(share: float) -> str:
    return f"{share * 100:.2f} %"


def _safe(text: str) -> str:
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
